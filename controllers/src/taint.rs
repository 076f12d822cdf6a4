//! Taint eviction (upstream taint-eviction-controller, once NoExecuteTaintManager): a pod on a
//! node with NoExecute taints it does not tolerate is deleted at once; one that tolerates them
//! all but with tolerationSeconds is deleted when the shortest of those runs out; one that
//! tolerates them without a limit stays. The clock starts at the taint's timeAdded (or when the
//! pod arrived, if later), so a new leader resumes the same deadlines. Before deleting, the pod
//! gets the DisruptionTarget condition (reason DeletionByTaintManager) and an Event.
//!
//! Each pod is reconciled on its own changes and on its node's; a pending deletion is a requeue
//! at the deadline, and a taint that goes away before then cancels it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, Taint, Toleration};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

const COMPONENT: &str = "taint-eviction-controller";

struct Ctx {
    client: Client,
    nodes: Store<Node>,
    /// The newest version of each node that the controller's own node watch has shown. Its
    /// events trigger the reconciles, and the reflector behind `nodes` may not have seen that
    /// version yet: a reconcile must not judge a pod by an older node than the one that woke it.
    latest: Arc<Mutex<HashMap<String, Arc<Node>>>>,
    /// Pods with a deletion pending (namespace/name → uid, and when the wait started, for
    /// taints without timeAdded), for the cancellation event.
    scheduled: Mutex<HashMap<String, (String, jiff::Timestamp)>>,
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let nodes = inf.nodes.store();
    let latest: Arc<Mutex<HashMap<String, Arc<Node>>>> = Arc::default();
    let ctx = Arc::new(Ctx { client, nodes, latest: latest.clone(), scheduled: Mutex::new(HashMap::new()) });
    // A pod's own change matters only if its node has NoExecute taints or a deletion of it is
    // pending: nearly every pod change is neither and is not even queued. A taint added later
    // reaches the node's pods through the node's trigger below.
    let relevant = {
        let ctx = ctx.clone();
        move |pod: &Arc<Pod>| std::future::ready(ctx.relevant(pod))
    };
    let ctl = Controller::for_shared_stream(inf.pods.subscribe_applied().filter(relevant), inf.pods.store());
    let pods = ctl.store();
    let seen = latest;
    let ctl = ctl.watches_shared_stream(inf.nodes.subscribe(), move |node: Arc<Node>| {
        let name = node.name_any();
        let refs = pods.state().iter().filter(|p| node_of(p) == Some(name.as_str())).map(|p| ObjectRef::from_obj(p.as_ref())).collect::<Vec<_>>();
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(&name).is_none_or(|old| rv_of(old) <= rv_of(&node)) {
            seen.insert(name, node);
        }
        refs
    });
    crate::util::drain("taint-eviction", ctl.run(reconcile, crate::util::error_policy, ctx)).await;
    Ok(())
}

fn rv_of(node: &Node) -> u64 {
    node.metadata.resource_version.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0)
}

impl Ctx {
    /// Whether a change of this pod needs a reconcile: one is pending for it, or its node
    /// has a NoExecute taint.
    fn relevant(&self, pod: &Pod) -> bool {
        let key = pod_key(pod);
        if self.scheduled.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&key) {
            return true;
        }
        pod.metadata.deletion_timestamp.is_none()
            && node_of(pod).and_then(|n| self.node(n)).is_some_and(|node| crate::nodelifecycle::taints(&node).iter().any(|t| t.effect == "NoExecute"))
    }

    /// The newer of the reflector's copy of a node and the one that triggered us.
    fn node(&self, name: &str) -> Option<Arc<Node>> {
        let cached = self.nodes.get(&ObjectRef::new(name));
        let seen = self.latest.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned();
        match (cached, seen) {
            (Some(c), Some(s)) => Some(if rv_of(&s) > rv_of(&c) { s } else { c }),
            (c, s) => c.or(s),
        }
    }
}

/// How `scheduled` names a pod.
fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

/// Does `tol` tolerate `taint` (upstream Toleration.ToleratesTaint)?
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = tol.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "" | "Equal" => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// What to do about a pod under these NoExecute taints.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No NoExecute taint, or all tolerated for ever.
    Stay,
    /// Delete now.
    Evict,
    /// Delete after this many seconds from the start.
    After(i64),
}

/// Upstream processPodOnNode: every taint needs a toleration; then the shortest
/// tolerationSeconds among the tolerations used (none: for ever; zero or less: now).
pub fn verdict(taints: &[&Taint], tolerations: &[Toleration]) -> Verdict {
    if taints.is_empty() {
        return Verdict::Stay;
    }
    let mut min: Option<i64> = None;
    for taint in taints {
        let Some(tol) = tolerations.iter().find(|t| tolerates(t, taint)) else { return Verdict::Evict };
        if let Some(s) = tol.toleration_seconds {
            if s <= 0 {
                return Verdict::Evict;
            }
            min = Some(min.map_or(s, |m| m.min(s)));
        }
    }
    match min {
        None => Verdict::Stay,
        Some(s) => Verdict::After(s),
    }
}

/// When the pod's tolerance started: the earliest NoExecute taint's timeAdded, or the pod's
/// creation if that is later; None when no taint says when it was added.
pub fn start_of(taints: &[&Taint], pod: &Pod) -> Option<jiff::Timestamp> {
    let added = taints.iter().filter_map(|t| t.time_added.as_ref().map(|t| t.0)).min()?;
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    Some(created.map_or(added, |c| c.max(added)))
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&pod, &ctx).await?)
}

async fn sync(pod: &Pod, ctx: &Ctx) -> anyhow::Result<Action> {
    let key = pod_key(pod);
    if pod.metadata.deletion_timestamp.is_some() {
        ctx.scheduled.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        return Ok(Action::await_change());
    }
    let Some(node) = node_of(pod).and_then(|n| ctx.node(n)) else { return Ok(Action::await_change()) };
    let taints: Vec<&Taint> = crate::nodelifecycle::taints(&node).iter().filter(|t| t.effect == "NoExecute").collect();
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let at = match verdict(&taints, &tolerations) {
        Verdict::Stay => {
            cancel(ctx, pod, &key).await;
            return Ok(Action::await_change());
        }
        Verdict::Evict => None,
        Verdict::After(secs) => {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let mut scheduled = ctx.scheduled.lock().unwrap_or_else(|e| e.into_inner());
            let entry = scheduled.entry(key.clone()).or_insert_with(|| (uid.clone(), jiff::Timestamp::now()));
            if entry.0 != uid {
                *entry = (uid, jiff::Timestamp::now());
            }
            // Taints without timeAdded: from when we first saw the pod under them.
            let start = start_of(&taints, pod).unwrap_or(entry.1);
            Some(start.as_millisecond().saturating_add(secs.saturating_mul(1000)))
        }
    };
    let now = jiff::Timestamp::now().as_millisecond();
    if let Some(at) = at.filter(|at| *at > now) {
        return Ok(Action::requeue(Duration::from_millis((at - now) as u64)));
    }
    evict(ctx, pod).await?;
    ctx.scheduled.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    Ok(Action::await_change())
}

async fn cancel(ctx: &Ctx, pod: &Pod, key: &str) {
    let was = ctx.scheduled.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    if was.is_some() {
        tracing::info!(pod = %key, "cancelling taint eviction");
        crate::events::normal(&ctx.client, COMPONENT, pod, "TaintManagerEviction", format!("Cancelling deletion of Pod {key}")).await;
    }
}

async fn evict(ctx: &Ctx, pod: &Pod) -> anyhow::Result<()> {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let uid = pod.metadata.uid.clone();
    tracing::info!(pod = %format!("{ns}/{name}"), node = node_of(pod).unwrap_or(""), "evicting pod: NoExecute taint");
    crate::events::normal(&ctx.client, COMPONENT, pod, "TaintManagerEviction", format!("Marking for deletion Pod {ns}/{name}")).await;
    let api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let has_condition = pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "DisruptionTarget" && c.status == "True"));
    if !has_condition {
        let cond = PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("DeletionByTaintManager".into()),
            message: Some("Taint manager: deleting due to NoExecute taint".into()),
            last_transition_time: Some(crate::util::now()),
            ..Default::default()
        };
        let patch = json!({"metadata": {"uid": uid}, "status": {"conditions": [cond]}});
        match api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch)).await {
            Ok(_) => {}
            Err(e) if crate::util::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("adding DisruptionTarget to pod {ns}/{name}")),
        }
    }
    let dp = DeleteParams { preconditions: Some(Preconditions { uid, resource_version: None }), ..Default::default() };
    match api.delete(&name, &dp).await {
        Ok(_) => Ok(()),
        Err(e) if crate::util::is_not_found(&e) || crate::util::is_status(&e, 409) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting pod {ns}/{name}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(k: &str, v: Option<&str>, added: Option<i64>) -> Taint {
        Taint { key: k.into(), value: v.map(str::to_string), effect: "NoExecute".into(), time_added: added.map(|s| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::from_second(s).unwrap())) }
    }

    fn tol(k: &str, op: &str, v: Option<&str>, effect: Option<&str>, secs: Option<i64>) -> Toleration {
        Toleration { key: Some(k.into()).filter(|k: &String| !k.is_empty()), operator: Some(op.into()), value: v.map(str::to_string), effect: effect.map(str::to_string), toleration_seconds: secs }
    }

    #[test]
    fn toleration_matching() {
        let t = taint("dedicated", Some("a"), None);
        assert!(tolerates(&tol("dedicated", "Equal", Some("a"), Some("NoExecute"), None), &t));
        assert!(!tolerates(&tol("dedicated", "Equal", Some("b"), None, None), &t));
        assert!(!tolerates(&tol("dedicated", "Exists", None, Some("NoSchedule"), None), &t));
        assert!(tolerates(&tol("", "Exists", None, None, None), &t), "empty key with Exists tolerates everything");
        assert!(!tolerates(&tol("other", "Exists", None, None, None), &t));
    }

    #[test]
    fn verdicts() {
        let u = taint("node.kubernetes.io/unreachable", None, Some(100));
        let d = taint("dedicated", Some("a"), Some(200));
        assert_eq!(verdict(&[], &[]), Verdict::Stay);
        assert_eq!(verdict(&[&u], &[]), Verdict::Evict);
        assert_eq!(verdict(&[&u], &[tol("node.kubernetes.io/unreachable", "Exists", None, Some("NoExecute"), Some(30))]), Verdict::After(30));
        assert_eq!(verdict(&[&u], &[tol("node.kubernetes.io/unreachable", "Exists", None, None, None)]), Verdict::Stay);
        assert_eq!(verdict(&[&u], &[tol("node.kubernetes.io/unreachable", "Exists", None, None, Some(0))]), Verdict::Evict);
        let both = [tol("node.kubernetes.io/unreachable", "Exists", None, None, Some(30)), tol("dedicated", "Equal", Some("a"), None, Some(10))];
        assert_eq!(verdict(&[&u, &d], &both), Verdict::After(10), "the shortest");
        assert_eq!(verdict(&[&u, &d], &both[..1]), Verdict::Evict, "one taint untolerated");
        let p = Pod { metadata: kube::api::ObjectMeta { creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::from_second(150).unwrap())), ..Default::default() }, ..Default::default() };
        assert_eq!(start_of(&[&u, &d], &p).map(|t| t.as_second()), Some(150), "pod arrived after the taint");
        assert_eq!(start_of(&[&u, &d], &Pod::default()).map(|t| t.as_second()), Some(100));
        assert_eq!(start_of(&[&taint("x", None, None)], &p), None);
    }
}
