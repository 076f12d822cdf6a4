//! Job controller (batch/v1): runs pods until `completions` of them succeed, at most
//! `parallelism` at a time, retrying failed pods with exponential backoff up to `backoffLimit`,
//! within `activeDeadlineSeconds`, and honouring `suspend`.
//!
//! Finished pods are counted exactly once, across controller restarts and leader changes, the
//! way upstream does it: every pod carries the `batch.kubernetes.io/job-tracking` finalizer; a
//! finished pod's uid is first written to `status.uncountedTerminatedPods`, then its finalizer
//! is removed, then the uid moves into the `succeeded`/`failed` counters. A pod without the
//! finalizer has been counted; a uid in the uncounted list is never added twice. Every status
//! write is a compare-and-swap (PUT with the resourceVersion read), so a stale cached Job can
//! never count a pod again.
//!
//! Terminal conditions follow Kubernetes 1.31+: `SuccessCriteriaMet` or `FailureTarget` first,
//! then `Complete` or `Failed` once no pod of the Job is left running or uncounted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::join_all;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, PodFailurePolicy, SuccessPolicy, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::util::{controller_ref, owner_ref, pod_ready};

const COMPONENT: &str = "job-controller";
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const LEGACY_CONTROLLER_UID: &str = "controller-uid";
const LEGACY_JOB_NAME: &str = "job-name";
/// Upstream's pod-failure backoff: 10 s, doubling per failure since the last success, capped.
const BACKOFF_BASE_SECS: i64 = 10;
const BACKOFF_MAX_SECS: i64 = 360;
/// At most this many pods created per sync (upstream's burst).
const MAX_BATCH: usize = 500;

struct Ctx {
    client: Client,
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default()).owns_shared_stream(inf.pods.subscribe());
    let jobs = crate::util::drain("job", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client: client.clone() })));
    // Pods whose Job is gone (deleted in the background) still carry the tracking finalizer:
    // a second controller over pods releases them, as upstream's orphan-pod handling does.
    // Only pods that carry the finalizer can need it removed: the others (nearly all pods)
    // are not even queued.
    let with_finalizer = inf.pods.subscribe_applied().filter(|p| std::future::ready(has_finalizer(p)));
    let orphans = Controller::for_shared_stream(with_finalizer, inf.pods.store());
    let orphans = crate::util::drain("job-orphan-pods", orphans.run(reconcile_orphan, crate::util::error_policy, Arc::new(Ctx { client })));
    tokio::join!(jobs, orphans);
    Ok(())
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&job, &ctx.client).await?)
}

/// How a pod counts for its Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodState {
    Active,
    Succeeded,
    /// Failed, or deleted before it succeeded (upstream counts those as failed too).
    Failed,
}

pub fn pod_state(pod: &Pod) -> PodState {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => PodState::Succeeded,
        Some("Failed") => PodState::Failed,
        _ if pod.metadata.deletion_timestamp.is_some() => PodState::Failed,
        _ => PodState::Active,
    }
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
}

pub fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status.conditions.iter().flatten().find(|c| c.type_ == type_ && c.status == "True")
}

/// Complete or Failed: nothing more happens to the Job's pods.
pub fn finished(status: &JobStatus) -> bool {
    condition(status, "Complete").is_some() || condition(status, "Failed").is_some()
}

/// When the pod stopped: its containers' latest finish, else its deletion, else its last
/// condition change, else its creation.
pub fn finish_time(pod: &Pod) -> Option<jiff::Timestamp> {
    let st = pod.status.as_ref();
    let terminated = st
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref().map(|t| t.0))
        .max();
    terminated
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
        .or_else(|| st.and_then(|s| s.conditions.as_ref()).into_iter().flatten().filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0)).max())
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Seconds to wait before the next pod may be created: 10 s after the first failure since the
/// last success, doubling per further failure, at most 6 min; counted from the last failure.
/// Derived from the pods alone, so it survives controller restarts.
pub fn backoff_remaining(pods: &[Pod], now: jiff::Timestamp) -> i64 {
    let last_success = pods.iter().filter(|p| pod_state(p) == PodState::Succeeded).filter_map(finish_time).max();
    let failures: Vec<jiff::Timestamp> = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .filter_map(finish_time)
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let Some(last_failure) = failures.iter().max() else { return 0 };
    let delay = backoff_delay(failures.len());
    (last_failure.as_second().saturating_add(delay) - now.as_second()).max(0)
}

pub fn backoff_delay(failures: usize) -> i64 {
    if failures == 0 {
        return 0;
    }
    let shift = (failures - 1).min(32) as u32;
    BACKOFF_BASE_SECS.saturating_mul(1i64 << shift).min(BACKOFF_MAX_SECS)
}

/// How many pods should be running now (NonIndexed): what is left of `completions`, at most
/// `parallelism`; without `completions` (a work queue), `parallelism` until one succeeds, then
/// no new ones.
pub fn want_active(spec: &JobSpec, succeeded: i64, active: i64) -> i64 {
    let parallelism = i64::from(spec.parallelism.unwrap_or(1).max(0));
    match spec.completions {
        Some(c) => (i64::from(c) - succeeded).max(0).min(parallelism),
        None if succeeded > 0 => active.min(parallelism),
        None => parallelism,
    }
}

/// A pod's completion index (Indexed Jobs), from its annotation.
pub fn completion_index(pod: &Pod) -> Option<u32> {
    pod.annotations().get(COMPLETION_INDEX)?.parse().ok()
}

/// `status.completedIndexes` ("1,3-5,7") as a set, ignoring anything malformed or out of range.
pub fn parse_indexes(s: &str, completions: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>(), b.parse::<u32>()),
            None => (part.parse::<u32>(), part.parse::<u32>()),
        };
        if let (Ok(lo), Ok(hi)) = (lo, hi) {
            out.extend((lo..=hi.min(completions.saturating_sub(1))).take(completions as usize));
        }
    }
    out
}

/// The inverse of parse_indexes: ascending, runs of consecutive indexes as ranges.
pub fn format_indexes(set: &BTreeSet<u32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(lo) = iter.next() {
        let mut hi = lo;
        while iter.peek() == Some(&(hi + 1)) {
            hi += 1;
            iter.next();
        }
        parts.push(if hi == lo { lo.to_string() } else { format!("{lo}-{hi}") });
    }
    parts.join(",")
}

/// Indexed Jobs: which active pods to delete (no or a bad index, an index already completed or
/// already running, or beyond `parallelism`, highest first) and which indexes to start (lowest
/// missing first, up to `parallelism` running).
pub fn plan_indexed<'a>(active: &[&'a Pod], completed: &BTreeSet<u32>, completions: u32, parallelism: usize) -> (Vec<&'a Pod>, Vec<Option<u32>>) {
    let mut victims = Vec::new();
    let mut running: BTreeMap<u32, &'a Pod> = BTreeMap::new();
    for p in active {
        match completion_index(p).filter(|ix| *ix < completions && !completed.contains(ix)) {
            Some(ix) if !running.contains_key(&ix) => {
                running.insert(ix, p);
            }
            _ => victims.push(*p),
        }
    }
    while running.len() > parallelism {
        if let Some((_, p)) = running.pop_last() {
            victims.push(p);
        }
    }
    let room = parallelism - running.len();
    let start = (0..completions).filter(|ix| !completed.contains(ix) && !running.contains_key(ix)).take(room).map(Some).collect();
    (victims, start)
}

/// The restart count that `backoffLimit` bounds for restartPolicy OnFailure (upstream
/// pastBackoffLimitOnFailure).
/// The first successPolicy rule the completed indexes satisfy (Indexed Jobs): every index in
/// succeededIndexes; at least succeededCount of them (or of all indexes without a list).
pub fn success_rule(policy: &SuccessPolicy, completed: &BTreeSet<u32>, completions: u32) -> Option<usize> {
    policy.rules.iter().position(|r| {
        let count = r.succeeded_count.map(|c| c.max(0) as usize);
        match r.succeeded_indexes.as_deref() {
            Some(list) => {
                let want = parse_indexes(list, completions);
                let done = want.intersection(completed).count();
                match count {
                    Some(c) => done >= c,
                    None => !want.is_empty() && done == want.len(),
                }
            }
            None => count.is_some_and(|c| completed.len() >= c),
        }
    })
}

/// The podFailurePolicy action and message for a pod that failed (or is being deleted, as
/// with a DisruptionTarget condition after preemption or eviction).
fn policy_action(spec: &JobSpec, p: &Pod) -> Option<(String, String)> {
    let failed = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed") || p.metadata.deletion_timestamp.is_some();
    spec.pod_failure_policy.as_ref().filter(|_| failed).and_then(|policy| match_failure_policy(policy, p))
}

/// The podFailurePolicy rule a failed pod matches (upstream's matchPodFailurePolicy): the first
/// rule whose onExitCodes matches a container (init containers after app containers) that
/// terminated with a non-zero code, or whose onPodConditions matches one of the pod's
/// conditions. Returns the rule's action and, for FailJob, the Job's Failed message.
pub fn match_failure_policy(policy: &PodFailurePolicy, pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
    let containers = status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten());
    let exits: Vec<(&str, i32)> = containers.filter_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| (c.name.as_str(), t.exit_code))).filter(|(_, code)| *code != 0).collect();
    for (i, rule) in policy.rules.iter().enumerate() {
        if let Some(req) = &rule.on_exit_codes {
            let hit = exits.iter().find(|(c, code)| {
                req.container_name.as_deref().is_none_or(|want| want == *c)
                    && match req.operator.as_str() {
                        "In" => req.values.contains(code),
                        "NotIn" => !req.values.contains(code),
                        _ => false,
                    }
            });
            if let Some((c, code)) = hit {
                return Some((rule.action.clone(), format!("Container {c} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}", rule.action)));
            }
        }
        for pattern in rule.on_pod_conditions.iter().flatten() {
            let want = if pattern.status.is_empty() { "True" } else { pattern.status.as_str() };
            if status.conditions.iter().flatten().any(|c| c.type_ == pattern.type_ && c.status == want) {
                return Some((rule.action.clone(), format!("Pod {ns}/{name} has condition {} matching {} rule at index {i}", pattern.type_, rule.action)));
            }
        }
    }
    None
}

fn past_backoff_limit_on_failure(spec: &JobSpec, pods: &[&Pod]) -> bool {
    if spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) != Some("OnFailure") {
        return false;
    }
    let restarts: i64 = pods
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
        .map(|c| i64::from(c.restart_count))
        .sum();
    let limit = i64::from(spec.backoff_limit.unwrap_or(6));
    if limit == 0 { restarts > 0 } else { restarts >= limit }
}

fn new_condition(type_: &str, status: &str, reason: &str, message: &str, now: &Time) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Sets a condition, keeping its transition time when its status does not change. Returns
/// whether its status changed.
fn set_condition(status: &mut JobStatus, c: JobCondition) -> bool {
    let conds = status.conditions.get_or_insert_with(Vec::new);
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) if x.status == c.status => false,
        Some(x) => {
            *x = c;
            true
        }
        None => {
            conds.push(c);
            true
        }
    }
}

/// The 1.31+ interim condition that decides how the Job ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub type_: &'static str,
    pub reason: String,
    pub message: String,
}

impl Target {
    fn from_status(status: &JobStatus) -> Option<Target> {
        for t in ["FailureTarget", "SuccessCriteriaMet"] {
            if let Some(c) = condition(status, t) {
                return Some(Target { type_: t, reason: c.reason.clone().unwrap_or_default(), message: c.message.clone().unwrap_or_default() });
            }
        }
        None
    }
    fn failure(reason: &str, message: &str) -> Target {
        Target { type_: "FailureTarget", reason: reason.into(), message: message.into() }
    }
}

async fn sync(job: &Job, client: &Client) -> anyhow::Result<Action> {
    let name = job.name_any();
    let ns = job.namespace().context("Job without namespace")?;
    let uid = job.metadata.uid.clone().context("Job without uid")?;
    let spec = job.spec.as_ref().context("Job without spec")?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let jobs_api = Api::<Job>::namespaced(client.clone(), &ns);
    let listed = pods_api.list(&ListParams::default().labels(&format!("{CONTROLLER_UID}={uid}"))).await.with_context(|| format!("list pods of job {ns}/{name}"))?;
    let pods: Vec<Pod> = listed.items.into_iter().filter(|p| controller_ref(&p.metadata).is_some_and(|c| c.uid == uid)).collect();
    let old = job.status.clone().unwrap_or_default();

    // Being deleted, or already finished: only let go of the pods.
    if job.metadata.deletion_timestamp.is_some() || finished(&old) {
        let mut retry = false;
        for p in pods.iter().filter(|p| has_finalizer(p)) {
            retry |= !remove_finalizer(&pods_api, p).await;
        }
        return Ok(if retry { Action::requeue(Duration::from_secs(1)) } else { Action::await_change() });
    }

    let now = jiff::Timestamp::now();
    let now_t = Time(now);
    let mut status = old.clone();
    let mut events: Vec<(&str, &str, String)> = Vec::new();
    let mut requeue: Option<i64> = None;

    // 1. Note the newly finished pods as uncounted (persisted before their finalizers go).
    let uncounted = status.uncounted_terminated_pods.get_or_insert_with(UncountedTerminatedPods::default);
    let mut unc_s: BTreeSet<String> = uncounted.succeeded.clone().unwrap_or_default().into_iter().collect();
    let mut unc_f: BTreeSet<String> = uncounted.failed.clone().unwrap_or_default().into_iter().collect();
    // Indexed: a succeeded pod is counted by its index in completedIndexes instead (a second
    // success of the same index counts nothing), written before its finalizer goes.
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.unwrap_or(0).max(0) as u32;
    let mut completed = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""), completions);
    let mut let_go: Vec<&Pod> = Vec::new();
    // podFailurePolicy: failures an Ignore rule matches are not counted (their pods are let go
    // like indexed successes); a FailJob rule fails the Job.
    let mut fail_job: Option<String> = None;
    for p in pods.iter().filter(|p| has_finalizer(p)) {
        let puid = p.metadata.uid.clone().unwrap_or_default();
        match pod_state(p) {
            PodState::Succeeded if indexed && !unc_f.contains(&puid) => {
                if let Some(ix) = completion_index(p).filter(|i| *i < completions) {
                    completed.insert(ix);
                }
                let_go.push(p);
            }
            PodState::Succeeded if !unc_f.contains(&puid) => {
                unc_s.insert(puid);
            }
            PodState::Failed if !unc_s.contains(&puid) && !unc_f.contains(&puid) => {
                match policy_action(spec, p) {
                    Some((action, _)) if action == "Ignore" => let_go.push(p),
                    Some((action, message)) if action == "FailJob" => {
                        fail_job.get_or_insert(message);
                        unc_f.insert(puid);
                    }
                    _ => {
                        unc_f.insert(puid);
                    }
                }
            }
            _ => {}
        }
    }
    let succeeded = if indexed { completed.len() as i64 } else { i64::from(old.succeeded.unwrap_or(0)) + unc_s.len() as i64 };
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
        status.succeeded = Some(completed.len() as i32);
    }
    let failed = i64::from(old.failed.unwrap_or(0)) + unc_f.len() as i64;
    let active: Vec<&Pod> = pods.iter().filter(|p| pod_state(p) == PodState::Active).collect();

    // 2. Decide whether the Job has reached its end.
    let suspended = spec.suspend == Some(true);
    // Running for the first time, or resumed: the activeDeadlineSeconds timer starts now.
    if !suspended && (status.start_time.is_none() || condition(&status, "Suspended").is_some()) {
        status.start_time = Some(now_t.clone());
    }
    let backoff_limit = i64::from(spec.backoff_limit.unwrap_or(6));
    let deadline = match (spec.active_deadline_seconds, &status.start_time) {
        (Some(ads), Some(start)) if !suspended => Some(start.0.as_second().saturating_add(ads)),
        _ => None,
    };
    let mut target = Target::from_status(&status);
    if target.is_none() {
        if let Some(message) = fail_job {
            target = Some(Target::failure("PodFailurePolicy", &message));
        } else if failed > backoff_limit || past_backoff_limit_on_failure(spec, &active) {
            target = Some(Target::failure("BackoffLimitExceeded", "Job has reached the specified backoff limit"));
        } else if deadline.is_some_and(|d| now.as_second() >= d) {
            target = Some(Target::failure("DeadlineExceeded", "Job was active longer than specified deadline"));
        } else if let Some(i) = spec.success_policy.as_ref().filter(|_| indexed).and_then(|sp| success_rule(sp, &completed, completions)) {
            target = Some(Target { type_: "SuccessCriteriaMet", reason: "SuccessPolicy".into(), message: format!("Matched rules at index {i}") });
        } else if match spec.completions {
            Some(c) => succeeded >= i64::from(c),
            None => succeeded > 0 && active.is_empty(),
        } {
            target = Some(Target { type_: "SuccessCriteriaMet", reason: "CompletionsReached".into(), message: "Reached expected number of succeeded pods".into() });
        }
        if let Some(t) = &target {
            set_condition(&mut status, new_condition(t.type_, "True", &t.reason, &t.message, &now_t));
        }
    }

    // 3. Suspension: its condition, and a fresh start time (deadline timer) on resume.
    if target.is_none() {
        if suspended {
            if set_condition(&mut status, new_condition("Suspended", "True", "JobSuspended", "Job suspended", &now_t)) {
                events.push(("Normal", "Suspended", "Job suspended".into()));
            }
        } else {
            if condition(&status, "Suspended").is_some() {
                set_condition(&mut status, new_condition("Suspended", "False", "JobResumed", "Job resumed", &now_t));
                events.push(("Normal", "Resumed", "Job resumed".into()));
                status.start_time = Some(now_t.clone());
            }
            if let Some(ads) = spec.active_deadline_seconds {
                let start = status.start_time.as_ref().map(|t| t.0.as_second()).unwrap_or(now.as_second());
                requeue = Some(start.saturating_add(ads) - now.as_second());
            }
        }
    }

    // 4. Pods: create what is missing (after the failure backoff), delete what is too many.
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let mut created = 0usize;
    let stopping = target.is_some() || suspended;
    let (victims, to_create): (Vec<&Pod>, Vec<Option<u32>>) = if indexed {
        let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
        plan_indexed(&active, &completed, completions, if stopping { 0 } else { parallelism })
    } else {
        let want = if stopping { 0 } else { want_active(spec, succeeded, active.len() as i64) };
        let have = active.len() as i64;
        let mut victims = active.clone();
        crate::replicaset::rank_for_deletion(&mut victims);
        victims.truncate((have - want).max(0) as usize);
        (victims, vec![None; (want - have).max(0) as usize])
    };
    if !victims.is_empty() {
        for p in victims {
            let pname = p.name_any();
            match pods_api.delete(&pname, &DeleteParams::default()).await {
                Ok(_) => {
                    events.push(("Normal", "SuccessfulDelete", format!("Deleted pod: {pname}")));
                    deleted.insert(pname);
                }
                Err(e) if crate::util::is_not_found(&e) => {
                    deleted.insert(pname);
                }
                Err(e) => tracing::warn!(pod = %pname, namespace = %ns, error = %e, "deleting pod failed"),
            }
        }
    } else if !to_create.is_empty() {
        // Failures an Ignore rule matched do not delay replacements either.
        let counted: Vec<Pod> = pods.iter().filter(|p| pod_state(p) != PodState::Failed || policy_action(spec, p).is_none_or(|(a, _)| a != "Ignore")).cloned().collect();
        let wait = backoff_remaining(&counted, now);
        if wait > 0 {
            requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
        } else {
            let templates = to_create.iter().take(MAX_BATCH).map(|ix| pod_from_template(job, *ix)).collect::<anyhow::Result<Vec<Pod>>>()?;
            let pp = PostParams::default();
            for r in join_all(templates.iter().map(|t| pods_api.create(&pp, t))).await {
                match r {
                    Ok(p) => {
                        created += 1;
                        events.push(("Normal", "SuccessfulCreate", format!("Created pod: {}", p.name_any())));
                    }
                    Err(e) => {
                        tracing::warn!(job = %name, namespace = %ns, error = %e, "creating pod failed");
                        events.push(("Warning", "FailedCreate", format!("Error creating: {e}")));
                    }
                }
            }
        }
    }
    let still_active: Vec<&&Pod> = active.iter().filter(|p| !deleted.contains(&p.name_any())).collect();
    status.active = Some((still_active.len() + created) as i32);
    status.ready = Some(still_active.iter().filter(|p| pod_ready(p)).count() as i32);
    status.terminating = Some(pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some() && has_finalizer(p)).count() as i32);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods { succeeded: Some(unc_s.iter().cloned().collect()), failed: Some(unc_f.iter().cloned().collect()) });

    // 5. Persist the uncounted pods, then release their finalizers.
    let mut current = job.clone();
    if status != old {
        current = write_status(&jobs_api, &current, status.clone()).await?;
    }
    for (e_type, reason, msg) in events.drain(..) {
        crate::events::record(client, COMPONENT, job, e_type, reason, msg).await;
    }
    let mut retry = false;
    let mut released: BTreeSet<String> = BTreeSet::new();
    let listed_uids: BTreeMap<String, &Pod> = pods.iter().map(|p| (p.metadata.uid.clone().unwrap_or_default(), p)).collect();
    for p in let_go {
        retry |= !remove_finalizer(&pods_api, p).await;
    }
    for uid in unc_s.iter().chain(unc_f.iter()) {
        match listed_uids.get(uid) {
            None => {
                released.insert(uid.clone());
            }
            Some(p) if !has_finalizer(p) || remove_finalizer(&pods_api, p).await => {
                released.insert(uid.clone());
            }
            Some(_) => retry = true,
        }
    }

    // 6. Count the released pods, and end the Job once nothing of it is left running.
    let mut status = current.status.clone().unwrap_or_default();
    let moved_s = unc_s.iter().filter(|u| released.contains(*u)).count() as i32;
    let moved_f = unc_f.iter().filter(|u| released.contains(*u)).count() as i32;
    status.succeeded = Some(status.succeeded.unwrap_or(0) + moved_s);
    status.failed = Some(status.failed.unwrap_or(0) + moved_f);
    unc_s.retain(|u| !released.contains(u));
    unc_f.retain(|u| !released.contains(u));
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods { succeeded: Some(unc_s.iter().cloned().collect()), failed: Some(unc_f.iter().cloned().collect()) });
    let lingering = pods.iter().any(|p| pod_state(p) == PodState::Active && !deleted.contains(&p.name_any())) || !deleted.is_empty() || created > 0 || retry;
    if let Some(t) = &target {
        if unc_s.is_empty() && unc_f.is_empty() && !lingering {
            let end = Time(jiff::Timestamp::now());
            if t.type_ == "SuccessCriteriaMet" {
                set_condition(&mut status, new_condition("Complete", "True", &t.reason, &t.message, &end));
                status.completion_time = Some(end);
                events.push(("Normal", "Completed", "Job completed".into()));
            } else {
                set_condition(&mut status, new_condition("Failed", "True", &t.reason, &t.message, &end));
                events.push(("Warning", if t.reason.is_empty() { "Failed" } else { t.reason.as_str() }, t.message.clone()));
            }
            status.active = Some(0);
            status.ready = Some(0);
            status.terminating = Some(0);
        }
    }
    if Some(&status) != current.status.as_ref() {
        write_status(&jobs_api, &current, status).await?;
    }
    for (e_type, reason, msg) in events {
        crate::events::record(client, COMPONENT, job, e_type, reason, msg).await;
    }
    if retry {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(match requeue {
        // One second late rather than early: the deadline check compares whole seconds.
        Some(secs) => Action::requeue(Duration::from_secs(secs.clamp(0, 86_400) as u64 + 1)),
        None => Action::await_change(),
    })
}

/// Writes `status` as a compare-and-swap on the Job's resourceVersion.
async fn write_status(api: &Api<Job>, job: &Job, status: JobStatus) -> anyhow::Result<Job> {
    let mut next = job.clone();
    next.status = Some(status);
    next.metadata.managed_fields = None;
    api.replace_status(&job.name_any(), &PostParams::default(), &next).await.with_context(|| format!("update status of job {}", job.name_any()))
}

/// Drops the tracking finalizer (compare-and-swap on the pod). True when it is gone.
async fn remove_finalizer(api: &Api<Pod>, pod: &Pod) -> bool {
    let rest: Vec<&String> = pod.finalizers().iter().filter(|f| *f != TRACKING_FINALIZER).collect();
    let rest = if rest.is_empty() { serde_json::Value::Null } else { json!(rest) };
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": pod.metadata.resource_version}});
    match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => true,
        Err(e) if crate::util::is_not_found(&e) => true,
        Err(e) if crate::util::is_status(&e, 409) => false,
        Err(e) => {
            tracing::warn!(pod = %pod.name_any(), error = %e, "removing the job-tracking finalizer failed");
            false
        }
    }
}

/// The pod a Job runs: its template, labelled with the Job's uid and name (both the
/// `batch.kubernetes.io/` labels and the legacy ones), owned by the Job, tracked by finalizer.
pub fn pod_from_template(job: &Job, index: Option<u32>) -> anyhow::Result<Pod> {
    let template = job.spec.as_ref().map(|s| s.template.clone()).context("Job without spec")?;
    let tm = template.metadata.unwrap_or_default();
    let uid = job.metadata.uid.clone().context("Job without uid")?;
    let name = job.name_any();
    let mut labels = tm.labels.unwrap_or_default();
    for (k, v) in [(CONTROLLER_UID, &uid), (LEGACY_CONTROLLER_UID, &uid), (JOB_NAME, &name), (LEGACY_JOB_NAME, &name)] {
        labels.insert(k.to_string(), v.clone());
    }
    let mut finalizers = tm.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.to_string());
    // Explicitly no init containers: the API server's admission otherwise stores
    // `initContainers: null`, and then refuses every later metadata patch of the pod (the one
    // that removes our finalizer) as a change of its spec.
    let mut spec = template.spec;
    if let Some(s) = spec.as_mut() {
        s.init_containers.get_or_insert_with(Vec::new);
    }
    let mut annotations = tm.annotations;
    let mut generate_name = format!("{name}-");
    if let Some(ix) = index {
        // Indexed: the index in an annotation and a label, the hostname <job>-<index>, and
        // $JOB_COMPLETION_INDEX from the annotation in every container.
        annotations.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), ix.to_string());
        labels.insert(COMPLETION_INDEX.into(), ix.to_string());
        generate_name = format!("{name}-{ix}-");
        if let Some(s) = spec.as_mut() {
            if s.hostname.as_deref().unwrap_or("").is_empty() {
                s.hostname = Some(format!("{name}-{ix}"));
            }
            for c in s.init_containers.iter_mut().flatten().chain(s.containers.iter_mut()) {
                let env = c.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    env.push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value_from: Some(EnvVarSource { field_ref: Some(ObjectFieldSelector { field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"), api_version: None }), ..Default::default() }),
                        value: None,
                    });
                }
            }
        }
    }
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations,
            finalizers: Some(finalizers),
            owner_references: Some(vec![owner_ref(job).context("Job without name or uid")?]),
            ..Default::default()
        },
        spec,
        status: None,
    })
}

/// A pod that still holds the tracking finalizer although its Job is gone (or is another Job
/// of the same name) gets released, once it has finished or is being deleted.
async fn reconcile_orphan(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    if !has_finalizer(&pod) || pod_state(&pod) == PodState::Active {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let owner = controller_ref(&pod.metadata).filter(|c| c.kind == "Job" && c.api_version.starts_with("batch/"));
    let alive = match owner {
        Some(c) => match Api::<Job>::namespaced(ctx.client.clone(), &ns).get_opt(&c.name).await.map_err(anyhow::Error::from)? {
            Some(j) => j.metadata.uid.as_deref() == Some(c.uid.as_str()),
            None => false,
        },
        None => false,
    };
    if !alive && !remove_finalizer(&Api::namespaced(ctx.client.clone(), &ns), &pod).await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};

    fn ts(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    fn finished_pod(phase: &str, at: i64) -> Pod {
        Pod {
            metadata: ObjectMeta { creation_timestamp: Some(Time(ts(0))), ..Default::default() },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "c".into(),
                    state: Some(ContainerState { terminated: Some(ContainerStateTerminated { finished_at: Some(Time(ts(at))), ..Default::default() }), ..Default::default() }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn failure_policy_rules_match_exit_codes_and_conditions_in_order() {
        let policy: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1, 2]}}
        ]}))
        .expect("policy");
        let pod = |statuses: serde_json::Value, conditions: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "d"}, "status": {"phase": "Failed", "containerStatuses": statuses, "conditions": conditions}})).expect("pod")
        };
        let exited = |name: &str, code: i32| json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": code}}});
        let m = |p: &Pod| match_failure_policy(&policy, p);
        assert_eq!(m(&pod(json!([exited("main", 42)]), json!([]))), Some(("FailJob".into(), "Container main for pod d/p failed with exit code 42 matching FailJob rule at index 1".into())));
        // The first matching rule wins: the condition rule comes before the exit codes.
        assert_eq!(m(&pod(json!([exited("main", 42)]), json!([{"type": "DisruptionTarget", "status": "True"}]))).map(|r| r.0), Some("Ignore".into()));
        assert_eq!(m(&pod(json!([]), json!([{"type": "DisruptionTarget", "status": "True"}]))).map(|r| r.1), Some("Pod d/p has condition DisruptionTarget matching Ignore rule at index 0".into()));
        // A condition with another status does not match.
        assert_eq!(m(&pod(json!([]), json!([{"type": "DisruptionTarget", "status": "False"}]))), None);
        // Another container's 42: not the FailJob rule (it names main), but NotIn [1, 2] counts it.
        assert_eq!(m(&pod(json!([exited("side", 42)]), json!([]))).map(|r| r.0), Some("Count".into()));
        // Exit code 1 matches nothing; exit code 0 is never considered.
        assert_eq!(m(&pod(json!([exited("main", 1)]), json!([]))), None);
        assert_eq!(m(&pod(json!([exited("main", 0)]), json!([]))), None);
    }

    #[test]
    fn success_policy_rules_by_indexes_and_count() {
        let policy: SuccessPolicy = serde_json::from_value(json!({"rules": [
            {"succeededIndexes": "0,2-3"},
            {"succeededIndexes": "4-9", "succeededCount": 2},
            {"succeededCount": 5}
        ]}))
        .expect("policy");
        let done = |ix: &[u32]| ix.iter().copied().collect::<BTreeSet<u32>>();
        assert_eq!(success_rule(&policy, &done(&[0, 2]), 10), None);
        assert_eq!(success_rule(&policy, &done(&[0, 2, 3]), 10), Some(0));
        assert_eq!(success_rule(&policy, &done(&[1, 4]), 10), None);
        assert_eq!(success_rule(&policy, &done(&[1, 4, 9]), 10), Some(1));
        assert_eq!(success_rule(&policy, &done(&[0, 1, 2, 4, 10]), 12), Some(2));
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_and_caps_at_six_minutes() {
        assert_eq!([0, 1, 2, 3, 4, 5, 6, 7, 100].map(backoff_delay), [0, 10, 20, 40, 80, 160, 320, 360, 360]);
    }

    #[test]
    fn backoff_counts_failures_since_the_last_success_from_the_last_failure() {
        let pods = vec![finished_pod("Failed", 100), finished_pod("Failed", 110)];
        // Two failures: 20 s after the last one.
        assert_eq!(backoff_remaining(&pods, ts(115)), 15);
        assert_eq!(backoff_remaining(&pods, ts(130)), 0);
        // A success after the first failure resets the count: one failure, 10 s.
        let pods = vec![finished_pod("Failed", 100), finished_pod("Succeeded", 105), finished_pod("Failed", 110)];
        assert_eq!(backoff_remaining(&pods, ts(112)), 8);
        // No failure since the last success: no wait.
        let pods = vec![finished_pod("Failed", 100), finished_pod("Succeeded", 105)];
        assert_eq!(backoff_remaining(&pods, ts(101)), 0);
    }

    #[test]
    fn deleted_pods_count_as_failed_unless_they_succeeded() {
        let mut p = finished_pod("Running", 0);
        assert_eq!(pod_state(&p), PodState::Active);
        p.metadata.deletion_timestamp = Some(Time(ts(5)));
        assert_eq!(pod_state(&p), PodState::Failed);
        assert_eq!(pod_state(&finished_pod("Succeeded", 1)), PodState::Succeeded);
    }

    #[test]
    fn wanted_pods_follow_completions_and_parallelism() {
        let spec = |completions: Option<i32>, parallelism: i32| JobSpec { completions, parallelism: Some(parallelism), ..Default::default() };
        assert_eq!(want_active(&spec(Some(3), 2), 0, 0), 2);
        assert_eq!(want_active(&spec(Some(3), 2), 2, 1), 1);
        assert_eq!(want_active(&spec(Some(3), 2), 3, 0), 0);
        assert_eq!(want_active(&spec(Some(3), 0), 0, 0), 0);
        // Work queue: parallelism until the first success, then only those still running.
        assert_eq!(want_active(&spec(None, 4), 0, 1), 4);
        assert_eq!(want_active(&spec(None, 4), 1, 2), 2);
    }

    #[test]
    fn completed_indexes_round_trip_as_ranges() {
        let set = parse_indexes("0,2-4,7, 9-8,x,1-2", 8);
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 3, 4, 7]);
        assert_eq!(format_indexes(&set), "0-4,7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("0-4294967295", 0).is_empty());
    }

    #[test]
    fn indexed_jobs_start_the_lowest_missing_indexes_and_drop_duplicates() {
        let mk = |ix: Option<&str>, name: &str| {
            let mut p = finished_pod("Running", 0);
            p.metadata.name = Some(name.into());
            p.metadata.annotations = ix.map(|i| [(COMPLETION_INDEX.to_string(), i.to_string())].into());
            p
        };
        let pods = [mk(Some("1"), "a"), mk(Some("1"), "b"), mk(Some("0"), "done"), mk(None, "none"), mk(Some("9"), "far")];
        let active: Vec<&Pod> = pods.iter().collect();
        let completed: BTreeSet<u32> = [0].into();
        let (victims, start) = plan_indexed(&active, &completed, 4, 2);
        let names: Vec<String> = victims.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["b", "done", "none", "far"]);
        assert_eq!(start, [Some(2)]);
        // Over parallelism: the highest running index goes.
        let pods = [mk(Some("3"), "c"), mk(Some("2"), "d")];
        let active: Vec<&Pod> = pods.iter().collect();
        let (victims, start) = plan_indexed(&active, &BTreeSet::new(), 4, 1);
        assert_eq!((victims[0].name_any(), start.len()), ("c".to_string(), 0));
    }

    #[test]
    fn indexed_pods_carry_their_index() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "ix", "namespace": "default", "uid": "u1"},
            "spec": {"completionMode": "Indexed", "completions": 3, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}
        }))
        .unwrap();
        let p = pod_from_template(&job, Some(2)).unwrap();
        assert_eq!(p.metadata.generate_name.as_deref(), Some("ix-2-"));
        assert_eq!(p.annotations().get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(p.labels().get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(p.labels().get(JOB_NAME).map(String::as_str), Some("ix"));
        let spec = p.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("ix-2"));
        assert_eq!(spec.containers[0].env.as_ref().unwrap()[0].name, "JOB_COMPLETION_INDEX");
        assert_eq!(p.metadata.finalizers.unwrap(), [TRACKING_FINALIZER]);
        assert_eq!(p.metadata.owner_references.unwrap()[0].controller, Some(true));
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let mut st = JobStatus::default();
        assert!(set_condition(&mut st, new_condition("Suspended", "True", "JobSuspended", "Job suspended", &Time(ts(1)))));
        assert!(!set_condition(&mut st, new_condition("Suspended", "True", "JobSuspended", "Job suspended", &Time(ts(2)))));
        assert_eq!(st.conditions.as_ref().unwrap()[0].last_transition_time, Some(Time(ts(1))));
        assert!(set_condition(&mut st, new_condition("Suspended", "False", "JobResumed", "Job resumed", &Time(ts(3)))));
        assert!(condition(&st, "Suspended").is_none());
    }
}
