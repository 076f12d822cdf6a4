//! Admission on create: LimitRange defaults and bounds for pod containers, and ResourceQuota
//! enforcement. Quota usage is counted from the objects themselves and the quota object is
//! rewritten in the same transaction as the new object (a guard on its revision), so concurrent
//! creates through different replicas cannot both squeeze under the same limit.

use quota::{counted, quantity_of, show, usage_of};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::rest::Target;
use crate::store::{collection_range, Freshness, Guard};
use crate::Api;

/// Where the ServiceAccount token, CA and namespace appear in every container.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// ServiceAccount admission: the pod gets a projected volume with a bound token, the cluster CA
/// (ConfigMap kube-root-ca.crt) and its namespace, mounted in every container, unless it or its
/// ServiceAccount opts out (automountServiceAccountToken: false) or already mounts that path.
pub fn inject_service_account_volume(pod: &mut Value, sa: Option<&Value>) {
    if pod["spec"]["automountServiceAccountToken"].as_bool() == Some(false) {
        return;
    }
    if pod["spec"]["automountServiceAccountToken"].is_null() && sa.map(|s| s["automountServiceAccountToken"].as_bool() == Some(false)).unwrap_or(false) {
        return;
    }
    let mounted = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| pod["spec"][*l].as_array().into_iter().flatten())
        .any(|c| c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"] == SA_MOUNT_PATH));
    if mounted {
        return;
    }
    let name = format!("kube-api-access-{}", crate::rest::random_suffix());
    let volume = json!({
        "name": name,
        "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]},
    });
    if !pod["spec"]["volumes"].is_array() {
        pod["spec"]["volumes"] = json!([]);
    }
    if let Some(v) = pod["spec"]["volumes"].as_array_mut() {
        v.push(volume);
    }
    for list in ["initContainers", "containers"] {
        // get_mut, not indexing: indexing would store `initContainers: null` in the pod.
        for c in pod["spec"].get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if !c["volumeMounts"].is_array() {
                c["volumeMounts"] = json!([]);
            }
            if let Some(m) = c["volumeMounts"].as_array_mut() {
                m.push(json!({"name": name, "readOnly": true, "mountPath": SA_MOUNT_PATH}));
            }
        }
    }
}

/// Seconds a pod tolerates its node being not ready or unreachable, unless it says otherwise
/// (kube-apiserver's --default-not-ready/unreachable-toleration-seconds).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// See Api::admit_default_tolerations.
pub fn add_default_tolerations(pod: &mut Value) {
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let tolerated = pod["spec"]["tolerations"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                let effect = t["effect"].as_str().unwrap_or("");
                let key_matches = t["key"].as_str().unwrap_or("") == key || (t["key"].as_str().unwrap_or("").is_empty() && t["operator"] == "Exists");
                key_matches && (effect.is_empty() || effect == "NoExecute")
            })
        });
        if tolerated {
            continue;
        }
        if !pod["spec"]["tolerations"].is_array() {
            pod["spec"]["tolerations"] = json!([]);
        }
        if let Some(ts) = pod["spec"]["tolerations"].as_array_mut() {
            ts.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}));
        }
    }
}

impl Api {
    /// ServiceAccount admission for a new pod (see inject_service_account_volume). A missing
    /// ServiceAccount is not an error yet: the controller that creates `default` in every
    /// namespace comes with the controllers.
    pub async fn admit_service_account(&self, t: &Target, pod: &mut Value) -> ApiResult<()> {
        if !(t.res.group.is_empty() && t.res.kind == "Pod") {
            return Ok(());
        }
        let sa_name = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string();
        let cat = self.catalog.get();
        let sa = match cat.lookup("", "v1", "serviceaccounts") {
            Some(r) => self.store.get_shared(&crate::store::object_key(&r, t.ns.as_deref(), &sa_name), Freshness::Any).await?.map(|(v, _)| v),
            None => None,
        };
        inject_service_account_volume(pod, sa.as_deref());
        Ok(())
    }

    /// LimitRange (type Container) defaults for containers that set no requests/limits, then
    /// the min/max bounds (403 like the upstream plugin).
    pub async fn admit_limit_ranges(&self, t: &Target, pod: &mut Value) -> ApiResult<()> {
        if !(t.res.group.is_empty() && t.res.kind == "Pod") {
            return Ok(());
        }
        let cat = self.catalog.get();
        let Some(lr) = cat.lookup("", "v1", "limitranges") else { return Ok(()) };
        let (start, end) = collection_range(&lr, t.ns.as_deref());
        let ranges = self.store.list_shared(&start, &end, Freshness::Any).await?;
        if ranges.is_empty() {
            return Ok(());
        }
        let name = t.name.clone().unwrap_or_default();
        for (range, _) in &ranges {
            for item in range["spec"]["limits"].as_array().into_iter().flatten().filter(|i| i["type"] == "Container") {
                let default_lim = item["default"].as_object().cloned().unwrap_or_default();
                let mut default_req = item["defaultRequest"].as_object().cloned().unwrap_or_default();
                for (k, v) in &default_lim {
                    default_req.entry(k.clone()).or_insert(v.clone());
                }
                for list in ["initContainers", "containers"] {
                    for c in pod["spec"].get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                        if !c["resources"].is_object() {
                            c["resources"] = json!({});
                        }
                        for (part, defaults) in [("limits", &default_lim), ("requests", &default_req)] {
                            for (k, v) in defaults {
                                if c["resources"][part].get(k).is_none() {
                                    if !c["resources"][part].is_object() {
                                        c["resources"][part] = json!({});
                                    }
                                    c["resources"][part][k] = v.clone();
                                }
                            }
                        }
                        let cname = c["name"].as_str().unwrap_or("").to_string();
                        for (r, min) in item["min"].as_object().into_iter().flatten() {
                            let (Some(minv), Some(req)) = (quantity_of(min), quantity_of(&c["resources"]["requests"][r])) else { continue };
                            if req < minv {
                                return Err(self.forbidden_pod(t, &name, format!("minimum {r} usage per Container is {}, but request is {}", min.as_str().unwrap_or(""), c["resources"]["requests"][r].as_str().unwrap_or(""))));
                            }
                        }
                        for (r, max) in item["max"].as_object().into_iter().flatten() {
                            let Some(maxv) = quantity_of(max) else { continue };
                            match quantity_of(&c["resources"]["limits"][r]) {
                                Some(l) if l > maxv => {
                                    return Err(self.forbidden_pod(t, &name, format!("maximum {r} usage per Container is {}, but limit is {}", max.as_str().unwrap_or(""), c["resources"]["limits"][r].as_str().unwrap_or(""))))
                                }
                                None => return Err(self.forbidden_pod(t, &name, format!("container {cname} has no {r} limit but a maximum of {} is set", max.as_str().unwrap_or("")))),
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
        // Defaults may change the QoS class.
        pod["status"]["qosClass"] = json!(crate::strategy::qos_class(pod));
        Ok(())
    }

    /// Priority admission: a new pod's priorityClassName (or the global default class) becomes
    /// spec.priority and spec.preemptionPolicy; a priority that disagrees with the class, or a
    /// missing class, is refused. For PriorityClasses: only one may be the global default.
    pub async fn admit_priority(&self, t: &Target, obj: &mut Value) -> ApiResult<()> {
        let is_pod = t.res.group.is_empty() && t.res.kind == "Pod";
        let is_class = t.res.group == "scheduling.k8s.io" && t.res.kind == "PriorityClass";
        if !is_pod && !is_class {
            return Ok(());
        }
        let cat = self.catalog.get();
        let Some(pcs) = cat.lookup("scheduling.k8s.io", "v1", "priorityclasses") else { return Ok(()) };
        let name = t.name.clone().unwrap_or_default();
        if is_class {
            if obj["globalDefault"].as_bool() != Some(true) {
                return Ok(());
            }
            let (start, end) = collection_range(&pcs, None);
            let all = self.store.list(&start, &end, Freshness::Any, 0, &|_| true).await?;
            if let Some((other, _)) = all.items.iter().find(|(pc, _)| pc["globalDefault"].as_bool() == Some(true) && pc["metadata"]["name"].as_str() != Some(&name)) {
                let msg = format!("PriorityClass {} is already marked as default. Only one default can exist", other["metadata"]["name"].as_str().unwrap_or(""));
                return Err(ApiError::Forbidden { message: format!("{} \"{name}\" is forbidden: {msg}", t.res.gr()), gr: t.res.gr(), name });
            }
            return Ok(());
        }
        let class_name = obj["spec"]["priorityClassName"].as_str().unwrap_or("").to_string();
        let class = if class_name.is_empty() {
            let (start, end) = collection_range(&pcs, None);
            let all = self.store.list_shared(&start, &end, Freshness::Any).await?;
            // Several defaults can only come from a race: upstream picks the lowest value.
            all.into_iter().map(|(pc, _)| pc).filter(|pc| pc["globalDefault"].as_bool() == Some(true)).min_by_key(|pc| pc["value"].as_i64().unwrap_or(0))
        } else {
            match self.store.get_shared(&crate::store::object_key(&pcs, None, &class_name), Freshness::Any).await? {
                Some((pc, _)) => Some(pc),
                None => return Err(self.forbidden_pod(t, &name, format!("no PriorityClass with name {class_name} was found"))),
            }
        };
        let priority = class.as_ref().and_then(|pc| pc["value"].as_i64()).unwrap_or(0);
        if let Some(given) = obj["spec"]["priority"].as_i64() {
            if given != priority {
                return Err(self.forbidden_pod(t, &name, format!("the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {priority} from the given PriorityClass name")));
            }
        }
        obj["spec"]["priority"] = json!(priority);
        if let Some(pc) = class.as_ref().filter(|_| class_name.is_empty()) {
            obj["spec"]["priorityClassName"] = pc["metadata"]["name"].clone();
        }
        let policy = class.as_ref().and_then(|pc| pc["preemptionPolicy"].as_str()).unwrap_or("PreemptLowerPriority");
        if let Some(given) = obj["spec"]["preemptionPolicy"].as_str().filter(|g| *g != policy) {
            return Err(self.forbidden_pod(t, &name, format!("the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name")));
        }
        obj["spec"]["preemptionPolicy"] = json!(policy);
        Ok(())
    }

    /// DefaultTolerationSeconds admission: a new pod that does not tolerate the not-ready and
    /// unreachable NoExecute taints gets tolerations for them of 300 s, so its node has five
    /// minutes to come back before the pod is evicted.
    pub fn admit_default_tolerations(&self, t: &Target, pod: &mut Value) {
        if t.res.group.is_empty() && t.res.kind == "Pod" {
            add_default_tolerations(pod);
        }
    }

    /// DefaultStorageClass admission: a new claim that names no class (the field absent, not
    /// "") gets the default StorageClass, the newest if several are marked default.
    pub async fn admit_default_storage_class(&self, t: &Target, obj: &mut Value) -> ApiResult<()> {
        if !(t.res.group.is_empty() && t.res.kind == "PersistentVolumeClaim" && obj["spec"]["storageClassName"].is_null()) {
            return Ok(());
        }
        let cat = self.catalog.get();
        let Some(scs) = cat.lookup("storage.k8s.io", "v1", "storageclasses") else { return Ok(()) };
        let (start, end) = collection_range(&scs, None);
        let all = self.store.list(&start, &end, Freshness::Any, 0, &|_| true).await?;
        let default = all
            .items
            .into_iter()
            .map(|(sc, _)| sc)
            .filter(|sc| sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"].as_str() == Some("true"))
            .max_by(|a, b| a["metadata"]["creationTimestamp"].as_str().cmp(&b["metadata"]["creationTimestamp"].as_str()).then_with(|| b["metadata"]["name"].as_str().cmp(&a["metadata"]["name"].as_str())));
        if let Some(sc) = default {
            obj["spec"]["storageClassName"] = sc["metadata"]["name"].clone();
        }
        Ok(())
    }

    fn forbidden_pod(&self, t: &Target, name: &str, why: String) -> ApiError {
        ApiError::Forbidden { message: format!("{} \"{name}\" is forbidden: {why}", t.res.gr()), gr: t.res.gr(), name: name.to_string() }
    }

    /// Checks the namespace's ResourceQuotas against usage plus `obj`, and returns the quota
    /// objects (with their new status.used) to write in the same transaction.
    pub async fn admit_quota(&self, t: &Target, obj: &Value) -> ApiResult<Vec<Guard>> {
        let Some(ns) = t.ns.as_deref().filter(|_| t.res.namespaced) else { return Ok(vec![]) };
        let cat = self.catalog.get();
        let Some(rq) = cat.lookup("", "v1", "resourcequotas") else { return Ok(vec![]) };
        let (start, end) = collection_range(&rq, Some(ns));
        // Local reads suffice: a quota's usage is rewritten in the same transaction as every
        // object it counts (the guard below), so if this replica has the quota's latest version it
        // has every object counted in it, and a stale version fails the guard and is retried.
        let quotas = self.store.list_shared(&start, &end, Freshness::Any).await?;
        let relevant: Vec<_> = quotas
            .into_iter()
            .filter(|(q, _)| q["spec"]["hard"].as_object().map(|h| h.keys().any(|r| counted(&t.res.kind, &t.res.plural, &t.res.group, r))).unwrap_or(false))
            .collect();
        if relevant.is_empty() {
            return Ok(vec![]);
        }
        // Current usage, counted from the objects of this kind in the namespace.
        let (ostart, oend) = collection_range(&t.res, Some(ns));
        let existing = self.store.list(&ostart, &oend, Freshness::Any, 0, &|_| true).await?;
        let name = t.name.clone().unwrap_or_default();
        let mut guards = Vec::new();
        for (quota, kv) in relevant {
            let hard = quota["spec"]["hard"].as_object().cloned().unwrap_or_default();
            let mut used = quota["status"]["used"].as_object().cloned().unwrap_or_default();
            let mut exceeded = Vec::new();
            for (r, limit) in &hard {
                if !counted(&t.res.kind, &t.res.plural, &t.res.group, r) {
                    continue;
                }
                let Some(limit) = quantity_of(limit) else { continue };
                let current: f64 = existing.items.iter().map(|(o, _)| usage_of(&t.res.kind, o, r)).sum();
                let want = usage_of(&t.res.kind, obj, r);
                if want > 0.0 && current + want > limit + 1e-9 {
                    exceeded.push((r.clone(), want, current, limit));
                }
                used.insert(r.clone(), json!(show(r, current + want)));
            }
            if !exceeded.is_empty() {
                let qname = quota["metadata"]["name"].as_str().unwrap_or("");
                let f = |sel: &dyn Fn(&(String, f64, f64, f64)) -> f64| exceeded.iter().map(|e| format!("{}={}", e.0, show(&e.0, sel(e)))).collect::<Vec<_>>().join(",");
                let msg = format!("{} \"{name}\" is forbidden: exceeded quota: {qname}, requested: {}, used: {}, limited: {}", t.res.gr(), f(&|e| e.1), f(&|e| e.2), f(&|e| e.3));
                return Err(ApiError::Forbidden { message: msg, gr: t.res.gr(), name });
            }
            let mut q = Value::clone(&quota);
            q["status"]["hard"] = Value::Object(hard);
            q["status"]["used"] = Value::Object(used);
            guards.push(Guard { key: kv.key.clone(), revision: Some(kv.mod_revision), value: q });
        }
        Ok(guards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_tolerate_unready_and_unreachable_nodes_for_five_minutes_unless_they_say_otherwise() {
        let mut pod = json!({"spec": {"containers": [{"name": "a"}]}});
        add_default_tolerations(&mut pod);
        let ts = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
        assert_eq!(ts.len(), 2);
        assert!(ts.iter().all(|t| t["tolerationSeconds"] == 300 && t["effect"] == "NoExecute" && t["operator"] == "Exists"));
        let mut own = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}]}});
        add_default_tolerations(&mut own);
        let ts = own["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
        assert_eq!(ts.len(), 2, "only not-ready added: {ts:?}");
        assert_eq!(ts[0]["tolerationSeconds"], 0);
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        add_default_tolerations(&mut all);
        assert_eq!(all["spec"]["tolerations"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn pods_get_a_token_volume_unless_they_opt_out() {
        let mut pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}]}});
        inject_service_account_volume(&mut pod, None);
        let vol = pod["spec"]["volumes"][0].clone();
        assert!(vol["name"].as_str().unwrap_or("").starts_with("kube-api-access-"));
        assert_eq!(vol["projected"]["sources"][0]["serviceAccountToken"]["path"], "token");
        for c in pod["spec"]["containers"].as_array().cloned().unwrap_or_default() {
            assert!(c["volumeMounts"].as_array().map(|m| m.iter().any(|m| m["mountPath"] == SA_MOUNT_PATH && m["name"] == vol["name"])).unwrap_or(false), "{c}");
        }
        let mut off = json!({"spec": {"automountServiceAccountToken": false, "containers": [{"name": "a"}]}});
        inject_service_account_volume(&mut off, None);
        assert!(off["spec"].get("volumes").is_none());
        assert!(pod["spec"].get("initContainers").is_none(), "no null list added: {pod}");
        let mut by_sa = json!({"spec": {"containers": [{"name": "a"}]}});
        inject_service_account_volume(&mut by_sa, Some(&json!({"automountServiceAccountToken": false})));
        assert!(by_sa["spec"].get("volumes").is_none());
    }
}
