//! ResourceQuota accounting shared by the API server's quota admission and the controller
//! manager's quota status controller: which quota resources an object counts towards, how much
//! of each it uses, and quantities as numbers. Pure functions over JSON objects.

use serde_json::{json, Map, Value};

/// A Kubernetes quantity ("500m", "1Gi", "2", "1e3") as a number (cores, bytes, count).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (s, mult) in SUFFIXES {
        if let Some(num) = q.strip_suffix(s) {
            // "1E" is exa, but "1e3" is an exponent: only plain numbers before a suffix.
            if num.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '+' || c == '-') && !num.is_empty() {
                return num.parse::<f64>().ok().map(|n| n * mult);
            }
        }
    }
    q.parse::<f64>().ok()
}

pub fn quantity_of(v: &Value) -> Option<f64> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Formats an amount the way a quota message shows it: cpu in millicores when fractional,
/// memory in plain bytes, counts as integers.
pub fn show(resource: &str, v: f64) -> String {
    if resource.ends_with("cpu") && v.fract() != 0.0 {
        format!("{}m", (v * 1000.0).round() as i64)
    } else {
        format!("{}", v.round() as i64)
    }
}

/// What a pod asks for: sum over app containers, max against each init container.
pub fn pod_resources(pod: &Value, kind: &str) -> Map<String, Value> {
    let mut total: std::collections::BTreeMap<String, f64> = Default::default();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (r, q) in c["resources"][kind].as_object().into_iter().flatten() {
            *total.entry(r.clone()).or_default() += quantity_of(q).unwrap_or(0.0);
        }
    }
    for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
        for (r, q) in c["resources"][kind].as_object().into_iter().flatten() {
            let v = quantity_of(q).unwrap_or(0.0);
            let e = total.entry(r.clone()).or_default();
            if v > *e {
                *e = v;
            }
        }
    }
    total.into_iter().map(|(k, v)| (k, json!(v))).collect()
}

/// How much of quota resource `r` one object uses.
pub fn usage_of(kind: &str, obj: &Value, r: &str) -> f64 {
    let terminal = matches!(obj["status"]["phase"].as_str(), Some("Succeeded") | Some("Failed"));
    match (kind, r) {
        ("Pod", "pods" | "count/pods") => (!terminal) as u8 as f64,
        ("Pod", _) if terminal => 0.0,
        ("Pod", r) => {
            let (part, name) = match r.split_once('.') {
                Some(("requests", n)) => ("requests", n),
                Some(("limits", n)) => ("limits", n),
                _ => ("requests", r),
            };
            pod_resources(obj, part).get(name).and_then(Value::as_f64).unwrap_or(0.0)
        }
        ("Service", "services" | "count/services") => 1.0,
        ("Service", "services.nodeports") => {
            if matches!(obj["spec"]["type"].as_str(), Some("NodePort") | Some("LoadBalancer")) {
                obj["spec"]["ports"].as_array().map(|a| a.len() as f64).unwrap_or(0.0)
            } else {
                0.0
            }
        }
        ("Service", "services.loadbalancers") => (obj["spec"]["type"] == "LoadBalancer") as u8 as f64,
        ("PersistentVolumeClaim", "persistentvolumeclaims" | "count/persistentvolumeclaims") => 1.0,
        ("PersistentVolumeClaim", "requests.storage") => quantity_of(&obj["spec"]["resources"]["requests"]["storage"]).unwrap_or(0.0),
        ("ConfigMap", "configmaps" | "count/configmaps") => 1.0,
        ("Secret", "secrets" | "count/secrets") => 1.0,
        ("ReplicationController", "replicationcontrollers" | "count/replicationcontrollers") => 1.0,
        ("ResourceQuota", "resourcequotas" | "count/resourcequotas") => 1.0,
        // count/<resource>[.<group>] for anything else: one per object (the caller checked the
        // resource matches).
        (_, r) if r.starts_with("count/") => 1.0,
        _ => 0.0,
    }
}

pub fn counted(res_kind: &str, res_plural: &str, group: &str, r: &str) -> bool {
    let core = group.is_empty();
    match r.strip_prefix("count/") {
        Some(what) => {
            let want = if core { res_plural.to_string() } else { format!("{res_plural}.{group}") };
            what == want
        }
        None => matches!(
            (res_kind, r),
            ("Pod", "pods" | "cpu" | "memory" | "requests.cpu" | "requests.memory" | "limits.cpu" | "limits.memory" | "ephemeral-storage" | "requests.ephemeral-storage" | "limits.ephemeral-storage")
                | ("Service", "services" | "services.nodeports" | "services.loadbalancers")
                | ("PersistentVolumeClaim", "persistentvolumeclaims" | "requests.storage")
                | ("ConfigMap", "configmaps")
                | ("Secret", "secrets")
                | ("ReplicationController", "replicationcontrollers")
                | ("ResourceQuota", "resourcequotas")
        ) && core,
    }
}

/// Is `r` a quota resource this accounting tracks (compute resources of pods, object counts,
/// storage requests), as opposed to one it ignores (extended resources)?
pub fn is_known(r: &str) -> bool {
    r.starts_with("count/")
        || matches!(
            r,
            "pods" | "cpu" | "memory" | "requests.cpu" | "requests.memory" | "limits.cpu" | "limits.memory" | "ephemeral-storage" | "requests.ephemeral-storage" | "limits.ephemeral-storage"
                | "services" | "services.nodeports" | "services.loadbalancers" | "persistentvolumeclaims" | "requests.storage" | "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_binary_and_decimal_suffixes() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("256Mi"), Some(268435456.0));
        assert_eq!(parse_quantity("1k"), Some(1000.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("1E"), Some(1e18));
        assert_eq!(parse_quantity("lots"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn pod_usage_sums_containers_and_ignores_finished_pods() {
        let pod = json!({"spec": {"containers": [
            {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
            {"resources": {"requests": {"cpu": "250m"}}}
        ]}});
        assert_eq!(usage_of("Pod", &pod, "requests.cpu"), 0.5);
        assert_eq!(usage_of("Pod", &pod, "cpu"), 0.5);
        assert_eq!(usage_of("Pod", &pod, "limits.cpu"), 1.0);
        assert_eq!(usage_of("Pod", &pod, "pods"), 1.0);
        let done = json!({"spec": pod["spec"], "status": {"phase": "Succeeded"}});
        assert_eq!(usage_of("Pod", &done, "pods"), 0.0);
        assert!(counted("ConfigMap", "configmaps", "", "count/configmaps"));
        assert!(counted("Deployment", "deployments", "apps", "count/deployments.apps"));
        assert!(!counted("ConfigMap", "configmaps", "", "pods"));
        assert_eq!(usage_of("Deployment", &json!({}), "count/deployments.apps"), 1.0);
        assert_eq!(show("requests.cpu", 0.5), "500m");
        assert_eq!(show("pods", 2.0), "2");
    }
}
