//! Endpoints and EndpointSlice controllers: for every Service with a selector (and not
//! ExternalName), keep an Endpoints object of the same name listing the matching pods' IPs
//! (ready ones in `addresses`, the rest in `notReadyAddresses`) and discovery.k8s.io/v1
//! EndpointSlices (one per distinct port set, normally one) labelled with the Service's name.
//!
//! Pods are listed live from the API on each reconcile. Pod events are mapped to the Services
//! whose selector matches the pod now, or whose endpoints held it at their last reconcile (so a
//! pod whose labels stop matching is removed). Services without a selector are left alone:
//! their Endpoints are managed by hand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::util::{is_not_found, owner_ref, pod_ready};

const COMPONENT: &str = "endpoint-controller";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// (namespace, service) → names of the pods its endpoints held at the last reconcile.
type Members = Arc<Mutex<HashMap<(String, String), HashSet<String>>>>;

struct Ctx {
    client: Client,
    members: Members,
}

pub async fn run(client: Client, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let members: Members = Arc::default();
    let ctl = Controller::new(Api::<Service>::all(client.clone()), watcher::Config::default());
    let store = ctl.store();
    let m = members.clone();
    let ctl = ctl.watches_shared_stream(inf.pods.subscribe(), move |pod: Arc<Pod>| {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let members = m.lock().unwrap();
        store
            .state()
            .iter()
            .filter(|svc| svc.namespace().as_deref() == Some(ns.as_str()))
            .filter(|svc| {
                selector(svc).map(|sel| sel.iter().all(|(k, v)| pod.labels().get(k) == Some(v))).unwrap_or(false)
                    || members.get(&(ns.clone(), svc.name_any())).map(|s| s.contains(&name)).unwrap_or(false)
            })
            .map(|svc| ObjectRef::from_obj(svc.as_ref()))
            .collect::<Vec<_>>()
    });
    let cleanup = cleanup_deleted_services(client.clone(), members.clone());
    let ctx = Arc::new(Ctx { client, members });
    tokio::select! {
        _ = crate::util::drain("endpoints", ctl.run(reconcile, crate::util::error_policy, ctx)) => {}
        r = cleanup => r?,
    }
    Ok(())
}

/// The Service's selector, if it is one whose endpoints we manage.
fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// When a Service with a selector goes away, so do the Endpoints we kept for it (the
/// EndpointSlices carry an owner reference, and are deleted here too without waiting for the
/// garbage collector).
async fn cleanup_deleted_services(client: Client, members: Members) -> anyhow::Result<()> {
    let mut events = watcher(Api::<Service>::all(client.clone()), watcher::Config::default()).boxed();
    while let Some(ev) = events.next().await {
        let svc = match ev {
            Ok(watcher::Event::Delete(svc)) => svc,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "service watch error");
                continue;
            }
        };
        let (Some(ns), name) = (svc.namespace(), svc.name_any()) else { continue };
        members.lock().unwrap().remove(&(ns.clone(), name.clone()));
        if selector(&svc).is_none() {
            continue;
        }
        match Api::<Endpoints>::namespaced(client.clone(), &ns).delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(service = %name, namespace = %ns, "deleted endpoints of deleted service"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(service = %name, namespace = %ns, error = %e, "deleting endpoints failed"),
        }
        delete_our_slices(&client, &ns, &name, |_| true).await;
    }
    Ok(())
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&svc, &ctx).await?)
}

async fn sync(svc: &Service, ctx: &Ctx) -> anyhow::Result<Action> {
    let client = &ctx.client;
    let name = svc.name_any();
    let ns = svc.namespace().context("Service without namespace")?;
    let Some(sel) = selector(svc) else {
        // Manual Endpoints stay; slices we made while it had a selector go.
        ctx.members.lock().unwrap().remove(&(ns.clone(), name.clone()));
        delete_our_slices(client, &ns, &name, |_| true).await;
        return Ok(Action::await_change());
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let lp = ListParams::default().labels(&sel.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","));
    let pods = Api::<Pod>::namespaced(client.clone(), &ns).list(&lp).await.with_context(|| format!("list pods in {ns}"))?.items;
    let pods: Vec<Pod> = pods.into_iter().filter(|p| sel.iter().all(|(k, v)| p.labels().get(k) == Some(v))).collect();

    let held: HashSet<String> = pods.iter().filter(|p| pod_ip(p).is_some()).map(|p| p.name_any()).collect();
    ctx.members.lock().unwrap().insert((ns.clone(), name.clone()), held);

    sync_endpoints(svc, &ns, &name, &pods, client).await?;
    sync_slices(svc, &ns, &name, &pods, client).await?;
    Ok(Action::await_change())
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.pod_ip.as_deref().filter(|ip| !ip.is_empty())
}

fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded") | Some("Failed"))
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference { kind: Some("Pod".into()), name: pod.metadata.name.clone(), namespace: pod.metadata.namespace.clone(), uid: pod.metadata.uid.clone(), ..Default::default() }
}

/// The container port a Service port sends to on `pod` (upstream podutil.FindPort).
pub fn resolve_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) if s.is_empty() => Some(sp.port),
        Some(IntOrString::String(s)) => {
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            let spec = pod.spec.as_ref()?;
            spec.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(s.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == proto)
                .map(|p| p.container_port)
        }
    }
}

/// The Service's ports as resolved for `pod`; ports that cannot be resolved are left out.
fn pod_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            resolve_port(pod, sp).map(|port| EndpointPort { name: sp.name.clone().filter(|n| !n.is_empty()), port, protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())), app_protocol: sp.app_protocol.clone() })
        })
        .collect()
}

fn has_ports(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.ports.as_ref()).map(|p| !p.is_empty()).unwrap_or(false)
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false)
}

fn hostname_for(svc_name: &str, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    (spec.subdomain.as_deref() == Some(svc_name)).then(|| spec.hostname.clone()).flatten().filter(|h| !h.is_empty())
}

fn labels_for(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels
}

/// The Endpoints subsets for `pods`: one subset per distinct set of resolved ports, addresses
/// sorted by IP.
pub fn desired_subsets(svc: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let svc_name = svc.name_any();
    /// Per port set: the ports, the ready addresses, the not-ready ones.
    type Subset = (Vec<EndpointPort>, Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<String, Subset> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod_ip(pod) else { continue };
        if pod.metadata.deletion_timestamp.is_some() || terminal(pod) {
            continue;
        }
        let ports = pod_ports(svc, pod);
        if has_ports(svc) && ports.is_empty() {
            continue;
        }
        let addr = EndpointAddress { ip: ip.to_string(), hostname: hostname_for(&svc_name, pod), node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()), target_ref: Some(pod_ref(pod)) };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let g = groups.entry(key).or_insert_with(|| (ports, vec![], vec![]));
        if pod_ready(pod) || publish_not_ready(svc) {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    let sort = |v: &mut Vec<EndpointAddress>| v.sort_by(|a, b| (&a.ip, a.target_ref.as_ref().and_then(|r| r.uid.clone())).cmp(&(&b.ip, b.target_ref.as_ref().and_then(|r| r.uid.clone()))));
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            sort(&mut ready);
            sort(&mut not_ready);
            EndpointSubset { addresses: Some(ready).filter(|v| !v.is_empty()), not_ready_addresses: Some(not_ready).filter(|v| !v.is_empty()), ports: Some(ports).filter(|v| !v.is_empty()) }
        })
        .collect()
}

/// Subsets with empty lists and absent lists made equal, for comparison.
fn normalized(subsets: &Option<Vec<EndpointSubset>>) -> Vec<EndpointSubset> {
    subsets
        .iter()
        .flatten()
        .map(|s| EndpointSubset {
            addresses: s.addresses.clone().filter(|v| !v.is_empty()),
            not_ready_addresses: s.not_ready_addresses.clone().filter(|v| !v.is_empty()),
            ports: s.ports.clone().filter(|v| !v.is_empty()),
        })
        .collect()
}

async fn sync_endpoints(svc: &Service, ns: &str, name: &str, pods: &[Pod], client: &Client) -> anyhow::Result<()> {
    let api = Api::<Endpoints>::namespaced(client.clone(), ns);
    let subsets = desired_subsets(svc, pods);
    let labels = labels_for(svc);
    let want = Some(subsets).filter(|v| !v.is_empty());
    match api.get_opt(name).await.with_context(|| format!("get endpoints {ns}/{name}"))? {
        None => {
            let ep = Endpoints { metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), labels: Some(labels), ..Default::default() }, subsets: want };
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => tracing::debug!(service = %name, namespace = %ns, "created endpoints"),
                // Someone created it meanwhile: the next event brings us back.
                Err(e) if crate::util::is_status(&e, 409) => anyhow::bail!("endpoints {ns}/{name} created concurrently"),
                Err(e) => {
                    crate::events::record(client, COMPONENT, svc, "Warning", "FailedToCreateEndpoint", format!("Failed to create endpoint for service {ns}/{name}: {e}")).await;
                    return Err(anyhow::Error::new(e).context(format!("create endpoints {ns}/{name}")));
                }
            }
        }
        Some(mut ep) => {
            if normalized(&ep.subsets) == normalized(&want) && ep.labels() == &labels {
                return Ok(());
            }
            ep.subsets = want;
            ep.metadata.labels = Some(labels);
            // The resourceVersion it carries makes this a compare-and-swap.
            if let Err(e) = api.replace(name, &PostParams::default(), &ep).await {
                if !crate::util::is_status(&e, 409) {
                    crate::events::record(client, COMPONENT, svc, "Warning", "FailedToUpdateEndpoint", format!("Failed to update endpoint {ns}/{name}: {e}")).await;
                }
                return Err(anyhow::Error::new(e).context(format!("update endpoints {ns}/{name}")));
            }
            tracing::debug!(service = %name, namespace = %ns, "updated endpoints");
        }
    }
    Ok(())
}

/// Desired slices keyed by their (serialized) port set: (ports, endpoints sorted by address).
pub fn desired_slices(svc: &Service, pods: &[Pod]) -> BTreeMap<String, (Vec<discovery::EndpointPort>, Vec<discovery::Endpoint>)> {
    let svc_name = svc.name_any();
    let mut groups: BTreeMap<String, (Vec<discovery::EndpointPort>, Vec<discovery::Endpoint>)> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod_ip(pod) else { continue };
        // Terminating pods stay (terminating=true), as upstream's includeTerminating does.
        if terminal(pod) || ip.contains(':') {
            continue;
        }
        let ports: Vec<discovery::EndpointPort> =
            pod_ports(svc, pod).into_iter().map(|p| discovery::EndpointPort { name: Some(p.name.unwrap_or_default()), port: Some(p.port), protocol: p.protocol, app_protocol: p.app_protocol }).collect();
        if has_ports(svc) && ports.is_empty() {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = pod_ready(pod);
        let ready = (serving && !terminating) || publish_not_ready(svc);
        let ep = discovery::Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(discovery::EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) }),
            hostname: hostname_for(&svc_name, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            target_ref: Some(pod_ref(pod)),
            ..Default::default()
        };
        let key = serde_json::to_string(&ports).unwrap_or_default();
        groups.entry(key).or_insert_with(|| (ports, vec![])).1.push(ep);
    }
    for (_, eps) in groups.values_mut() {
        eps.sort_by(|a, b| (&a.addresses, a.target_ref.as_ref().and_then(|r| r.name.clone())).cmp(&(&b.addresses, b.target_ref.as_ref().and_then(|r| r.name.clone()))));
    }
    if groups.is_empty() {
        // Upstream keeps one placeholder slice with neither endpoints nor ports.
        groups.insert(serde_json::to_string(&Vec::<discovery::EndpointPort>::new()).unwrap_or_default(), (vec![], vec![]));
    }
    groups
}

fn slice_labels(svc: &Service, name: &str) -> BTreeMap<String, String> {
    let mut labels = labels_for(svc);
    labels.insert(LABEL_SERVICE_NAME.into(), name.into());
    labels.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    labels
}

fn slice_selector(name: &str) -> ListParams {
    ListParams::default().labels(&format!("{LABEL_SERVICE_NAME}={name},{LABEL_MANAGED_BY}={MANAGED_BY}"))
}

async fn delete_our_slices(client: &Client, ns: &str, name: &str, which: impl Fn(&discovery::EndpointSlice) -> bool) {
    let api = Api::<discovery::EndpointSlice>::namespaced(client.clone(), ns);
    let Ok(list) = api.list(&slice_selector(name)).await else { return };
    for s in list.items.iter().filter(|s| which(s)) {
        match api.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(_) => tracing::debug!(slice = %s.name_any(), namespace = %ns, "deleted endpoint slice"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(slice = %s.name_any(), namespace = %ns, error = %e, "deleting endpoint slice failed"),
        }
    }
}

async fn sync_slices(svc: &Service, ns: &str, name: &str, pods: &[Pod], client: &Client) -> anyhow::Result<()> {
    let api = Api::<discovery::EndpointSlice>::namespaced(client.clone(), ns);
    let mut want = desired_slices(svc, pods);
    let labels = slice_labels(svc, name);
    let owner = owner_ref(svc).context("Service without name or uid")?;
    let existing = api.list(&slice_selector(name)).await.with_context(|| format!("list endpoint slices of {ns}/{name}"))?.items;
    let key_of = |s: &discovery::EndpointSlice| serde_json::to_string(&s.ports.clone().unwrap_or_default()).unwrap_or_default();
    let mut leftover = vec![];
    for mut s in existing {
        // A slice with this port set that we have not matched yet keeps its name.
        let Some((ports, endpoints)) = want.remove(&key_of(&s)) else {
            leftover.push(s);
            continue;
        };
        let labels_ok = labels.iter().all(|(k, v)| s.labels().get(k) == Some(v)) && s.labels().len() == labels.len();
        let owned = s.metadata.owner_references.iter().flatten().any(|r| r.uid == owner.uid);
        if s.address_type == "IPv4" && s.endpoints == endpoints && s.ports.clone().unwrap_or_default() == ports && labels_ok && owned {
            continue;
        }
        s.endpoints = endpoints;
        s.ports = Some(ports);
        s.metadata.labels = Some(labels.clone());
        s.metadata.owner_references = Some(vec![owner.clone()]);
        if s.address_type != "IPv4" {
            // addressType is immutable: replace the slice.
            leftover.push(s);
            continue;
        }
        api.replace(&s.name_any(), &PostParams::default(), &s).await.with_context(|| format!("update endpoint slice {ns}/{}", s.name_any()))?;
        tracing::debug!(slice = %s.name_any(), namespace = %ns, "updated endpoint slice");
    }
    // Reuse leftovers for the remaining port sets before creating new slices.
    let (leftover, mut stale): (Vec<_>, Vec<_>) = leftover.into_iter().partition(|s| s.address_type == "IPv4");
    let mut leftover = leftover.into_iter();
    let mut reused = HashSet::new();
    for (_, (ports, endpoints)) in want {
        if let Some(mut s) = leftover.next() {
            s.endpoints = endpoints;
            s.ports = Some(ports);
            s.metadata.labels = Some(labels.clone());
            s.metadata.owner_references = Some(vec![owner.clone()]);
            api.replace(&s.name_any(), &PostParams::default(), &s).await.with_context(|| format!("update endpoint slice {ns}/{}", s.name_any()))?;
            reused.insert(s.name_any());
            continue;
        }
        let slice = discovery::EndpointSlice {
            metadata: ObjectMeta { generate_name: Some(format!("{name}-")), namespace: Some(ns.into()), labels: Some(labels.clone()), owner_references: Some(vec![owner.clone()]), ..Default::default() },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(ports),
        };
        let created = api.create(&PostParams::default(), &slice).await.with_context(|| format!("create endpoint slice for {ns}/{name}"))?;
        tracing::debug!(slice = %created.name_any(), namespace = %ns, "created endpoint slice");
        reused.insert(created.name_any());
    }
    stale.extend(leftover);
    let stale: HashSet<String> = stale.into_iter().map(|s| s.name_any()).collect();
    // Slices matched above are kept; everything else of ours for this Service goes.
    if !stale.is_empty() {
        delete_our_slices(client, ns, name, |s| stale.contains(&s.name_any()) && !reused.contains(&s.name_any())).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec};

    fn svc(target: IntOrString) -> Service {
        Service {
            metadata: ObjectMeta { name: Some("web".into()), namespace: Some("default".into()), uid: Some("u".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, target_port: Some(target), ..Default::default() }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), uid: Some(format!("uid-{name}")), ..Default::default() },
            spec: Some(PodSpec { containers: vec![Container { name: "c".into(), ports: Some(vec![ContainerPort { name: Some("web".into()), container_port: 8080, ..Default::default() }]), ..Default::default() }], ..Default::default() }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition { type_: "Ready".into(), status: if ready { "True" } else { "False" }.into(), ..Default::default() }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn ready_and_not_ready_pods_are_split_and_named_ports_resolved() {
        let s = svc(IntOrString::String("web".into()));
        let mut gone = pod("gone", "10.0.0.9", true);
        gone.metadata.deletion_timestamp = Some(crate::util::now());
        let pods = vec![pod("b", "10.0.0.2", false), pod("a", "10.0.0.1", true), gone];
        let subsets = desired_subsets(&s, &pods);
        assert_eq!(subsets.len(), 1);
        let ss = &subsets[0];
        assert_eq!(ss.addresses.as_ref().unwrap().iter().map(|a| a.ip.as_str()).collect::<Vec<_>>(), ["10.0.0.1"]);
        assert_eq!(ss.not_ready_addresses.as_ref().unwrap().iter().map(|a| a.ip.as_str()).collect::<Vec<_>>(), ["10.0.0.2"]);
        assert_eq!(ss.ports.as_ref().unwrap()[0].port, 8080);
        // The slice keeps the terminating pod, marked so.
        let slices = desired_slices(&s, &pods);
        let (_, eps) = slices.values().next().unwrap();
        assert_eq!(eps.len(), 3);
        let gone = eps.iter().find(|e| e.addresses == ["10.0.0.9"]).unwrap().conditions.clone().unwrap();
        assert_eq!((gone.ready, gone.terminating), (Some(false), Some(true)));
    }

    #[test]
    fn numeric_target_port_and_unresolvable_names() {
        assert_eq!(desired_subsets(&svc(IntOrString::Int(9000)), &[pod("a", "10.0.0.1", true)])[0].ports.as_ref().unwrap()[0].port, 9000);
        assert!(desired_subsets(&svc(IntOrString::String("nope".into())), &[pod("a", "10.0.0.1", true)]).is_empty());
    }
}
