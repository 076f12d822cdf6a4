//! What differs per kind: defaults, validation, which fields are selectable, whether deletion is
//! graceful. Everything else is the generic registry's (rest.rs), as in Kubernetes'
//! `pkg/registry/<group>/<resource>/strategy.go` over one generic store.

use serde_json::{json, Map, Value};

use crate::catalog::ResourceDef;
use crate::error::Cause;

/// Fields a field selector may use, beyond metadata.name and metadata.namespace.
pub fn selectable_fields(res: &ResourceDef) -> &'static [&'static str] {
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "Event") => &["regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "reason", "type", "reportingController"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("", "Secret") => &["type"],
        ("", "ReplicationController") => &["status.replicas"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        ("", "PersistentVolumeClaim") => &["spec.volumeName"],
        _ => &[],
    }
}

/// Kinds whose objects carry a spec whose changes bump metadata.generation.
pub fn tracks_generation(res: &ResourceDef) -> bool {
    !matches!(
        res.kind.as_str(),
        "ConfigMap" | "Secret" | "Event" | "Endpoints" | "EndpointSlice" | "ServiceAccount" | "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" | "ControllerRevision" | "Lease" | "LimitRange" | "StorageClass" | "PriorityClass" | "IngressClass" | "Namespace"
    )
}

/// Whether the parts of two objects that count as their spec for generation differ: everything
/// except metadata, status, apiVersion and kind.
pub fn spec_differs(a: &Value, b: &Value) -> bool {
    let spec = |k: &String| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind");
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => a.keys().filter(|k| spec(k)).count() != b.keys().filter(|k| spec(k)).count() || a.iter().filter(|(k, _)| spec(k)).any(|(k, v)| b.get(k) != Some(v)),
        _ => a != b,
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).map(Value::is_object).unwrap_or(false) {
        v[key] = json!({});
    }
    // Just made sure it is an object.
    v.get_mut(key).and_then(Value::as_object_mut).expect("object")
}

fn default_str(m: &mut Map<String, Value>, key: &str, val: &str) {
    if m.get(key).map(|v| v.is_null()).unwrap_or(true) {
        m.insert(key.into(), json!(val));
    }
}

fn default_val(m: &mut Map<String, Value>, key: &str, val: Value) {
    if m.get(key).map(|v| v.is_null()).unwrap_or(true) {
        m.insert(key.into(), val);
    }
}

fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else { return };
    default_str(s, "restartPolicy", "Always");
    default_str(s, "dnsPolicy", "ClusterFirst");
    default_str(s, "schedulerName", "default-scheduler");
    default_val(s, "terminationGracePeriodSeconds", json!(30));
    default_val(s, "securityContext", json!({}));
    default_val(s, "enableServiceLinks", json!(true));
    if s.get("serviceAccountName").map(|v| v.is_null()).unwrap_or(true) {
        let sa = s.get("serviceAccount").and_then(Value::as_str).unwrap_or("default").to_string();
        s.insert("serviceAccountName".into(), json!(sa));
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("").to_string();
                // IfNotPresent unless the tag is :latest or missing (digests count as pinned).
                let last = image.rsplit('/').next().unwrap_or("");
                let always = !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
                default_str(c, "imagePullPolicy", if always { "Always" } else { "IfNotPresent" });
                default_str(c, "terminationMessagePath", "/dev/termination-log");
                default_str(c, "terminationMessagePolicy", "File");
                default_val(c, "resources", json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        default_str(p, "protocol", "TCP");
                    }
                }
            }
        }
    }
}

fn default_template(spec: &mut Value) {
    if let Some(t) = spec.get_mut("template") {
        if let Some(ps) = t.get_mut("spec") {
            default_pod_spec(ps);
        }
    }
}

/// Defaults applied on create and update (as the API's defaulting functions would).
pub fn apply_defaults(res: &ResourceDef, obj: &mut Value) {
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => {
            obj_mut(obj, "spec");
            default_pod_spec(&mut obj["spec"]);
        }
        ("apps", "Deployment") => {
            let spec = obj_mut(obj, "spec");
            default_val(spec, "replicas", json!(1));
            default_val(spec, "revisionHistoryLimit", json!(10));
            default_val(spec, "progressDeadlineSeconds", json!(600));
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(st) = strategy.as_object_mut() {
                default_str(st, "type", "RollingUpdate");
                if st.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    let ru = st.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        default_val(ru, "maxSurge", json!("25%"));
                        default_val(ru, "maxUnavailable", json!("25%"));
                    }
                }
            }
            default_template(&mut obj["spec"]);
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            default_val(obj_mut(obj, "spec"), "replicas", json!(1));
            default_template(&mut obj["spec"]);
        }
        ("apps", "StatefulSet") => {
            let spec = obj_mut(obj, "spec");
            default_val(spec, "replicas", json!(1));
            default_str(spec, "podManagementPolicy", "OrderedReady");
            default_val(spec, "revisionHistoryLimit", json!(10));
            default_val(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
            default_template(&mut obj["spec"]);
        }
        ("apps", "DaemonSet") => {
            let spec = obj_mut(obj, "spec");
            default_val(spec, "revisionHistoryLimit", json!(10));
            default_val(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}));
            default_template(&mut obj["spec"]);
        }
        ("batch", "Job") => {
            let spec = obj_mut(obj, "spec");
            default_val(spec, "backoffLimit", json!(6));
            default_val(spec, "completions", json!(1));
            default_val(spec, "parallelism", json!(1));
            default_str(spec, "completionMode", "NonIndexed");
            default_val(spec, "suspend", json!(false));
            default_template(&mut obj["spec"]);
        }
        ("batch", "CronJob") => {
            let spec = obj_mut(obj, "spec");
            default_str(spec, "concurrencyPolicy", "Allow");
            default_val(spec, "suspend", json!(false));
            default_val(spec, "successfulJobsHistoryLimit", json!(3));
            default_val(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(jt) = spec.get_mut("jobTemplate").and_then(|j| j.get_mut("spec")) {
                default_template(jt);
            }
        }
        ("", "Service") => {
            let spec = obj_mut(obj, "spec");
            default_str(spec, "type", "ClusterIP");
            default_str(spec, "sessionAffinity", "None");
            if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
                default_val(spec, "ipFamilies", json!(["IPv4"]));
                default_str(spec, "ipFamilyPolicy", "SingleStack");
                default_str(spec, "internalTrafficPolicy", "Cluster");
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    default_str(p, "protocol", "TCP");
                    if p.get("targetPort").map(Value::is_null).unwrap_or(true) {
                        if let Some(port) = p.get("port").cloned() {
                            p.insert("targetPort".into(), port);
                        }
                    }
                }
            }
        }
        ("", "Namespace") => {
            let spec = obj_mut(obj, "spec");
            default_val(spec, "finalizers", json!(["kubernetes"]));
        }
        ("", "Secret") => {
            if let Some(m) = obj.as_object_mut() {
                default_val(m, "type", json!("Opaque"));
                // stringData is write-only: it lands base64-encoded in data, and wins there.
                if let Some(Value::Object(sd)) = m.remove("stringData") {
                    use base64::Engine;
                    let data = m.entry("data").or_insert_with(|| json!({}));
                    if let Some(d) = data.as_object_mut() {
                        for (k, v) in sd {
                            d.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or(""))));
                        }
                    }
                }
            }
        }
        ("", "PersistentVolume") => {
            default_str(obj_mut(obj, "spec"), "persistentVolumeReclaimPolicy", "Retain");
            default_str(obj_mut(obj, "spec"), "volumeMode", "Filesystem");
        }
        ("", "PersistentVolumeClaim") => {
            default_str(obj_mut(obj, "spec"), "volumeMode", "Filesystem");
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            if let Some(m) = obj.as_object_mut() {
                default_str(m, "preemptionPolicy", "PreemptLowerPriority");
            }
        }
        ("storage.k8s.io", "StorageClass") => {
            if let Some(m) = obj.as_object_mut() {
                default_str(m, "reclaimPolicy", "Delete");
                default_str(m, "volumeBindingMode", "Immediate");
            }
        }
        _ => {}
    }
}

/// A new Job's selector and pod labels, as the Job strategy generates them unless
/// spec.manualSelector is true: the Job's uid selects its pods, which also carry the Job's name.
/// A selector given without manualSelector is refused (it would be replaced).
pub fn generate_job_selector(job: &mut Value) -> Option<Cause> {
    if job["spec"]["manualSelector"].as_bool() == Some(true) {
        return None;
    }
    if job["spec"]["selector"].as_object().is_some_and(|s| !s.is_empty()) {
        return Some(Cause::invalid("spec.selector", job["spec"]["selector"].to_string(), "`selector` will be auto-generated"));
    }
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
    obj_mut(job, "spec").insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
    obj_mut(&mut job["spec"], "template");
    obj_mut(&mut job["spec"]["template"], "metadata");
    let labels = obj_mut(&mut job["spec"]["template"]["metadata"], "labels");
    for (k, v) in [("batch.kubernetes.io/controller-uid", &uid), ("controller-uid", &uid), ("batch.kubernetes.io/job-name", &name), ("job-name", &name)] {
        labels.insert(k.into(), json!(v));
    }
    None
}

/// Status an object starts with when its kind has a status subresource (spec writers cannot set
/// it).
pub fn initial_status(res: &ResourceDef, obj: &Value) -> Option<Value> {
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => Some(json!({"phase": "Pending", "qosClass": qos_class(obj)})),
        ("", "Namespace") => Some(json!({"phase": "Active"})),
        ("", "PersistentVolumeClaim") => Some(json!({"phase": "Pending"})),
        ("", "PersistentVolume") => Some(json!({"phase": "Pending"})),
        ("apiextensions.k8s.io", _) | ("", "Node") => None,
        _ => Some(json!({})),
    }
}

/// Guaranteed when every container has equal cpu and memory requests and limits, BestEffort when
/// none has any, Burstable otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"].iter().filter_map(|l| pod["spec"][*l].as_array()).flatten().collect();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let req = &c["resources"]["requests"];
        let lim = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            let (q, l) = (req.get(r).filter(|v| !v.is_null()), lim.get(r).filter(|v| !v.is_null()));
            if q.is_some() || l.is_some() {
                any = true;
            }
            // A missing request defaults to the limit.
            match l {
                Some(l) if q.is_none() || q == Some(l) => {}
                _ => guaranteed = false,
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// DNS-1123 label: lower-case alphanumerics and '-', at most 63, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().next().map(|b| b.is_ascii_alphanumeric()).unwrap_or(false)
        && s.bytes().last().map(|b| b.is_ascii_alphanumeric()).unwrap_or(false)
}

/// DNS-1123 subdomain: labels joined by '.', at most 253.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().map(|b| b.is_ascii_alphanumeric()).unwrap_or(false)
        && s.bytes().last().map(|b| b.is_ascii_alphanumeric()).unwrap_or(false)
}

/// Kinds whose names must be DNS-1123 labels (they become DNS names or label values).
fn name_is_label(res: &ResourceDef) -> bool {
    matches!(res.kind.as_str(), "Namespace" | "Service")
}

/// Kinds whose names are path segments only (RBAC allows ':' in names).
fn name_is_path_segment(res: &ResourceDef) -> bool {
    matches!(res.kind.as_str(), "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding")
}

pub fn validate_name(res: &ResourceDef, name: &str) -> Option<Cause> {
    if name.is_empty() {
        return Some(Cause::required("metadata.name"));
    }
    if name_is_path_segment(res) {
        if name == "." || name == ".." || name.contains('/') || name.contains('%') {
            return Some(Cause::invalid("metadata.name", name, "may not contain '/' or '%', and may not be '.' or '..'"));
        }
        return None;
    }
    if name_is_label(res) {
        if !is_dns1123_label(name) {
            return Some(Cause::invalid(
                "metadata.name",
                name,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
            ));
        }
    } else if !is_dns1123_subdomain(name) {
        return Some(Cause::invalid(
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ));
    }
    None
}

fn validate_label_map(field: &str, m: &Value, causes: &mut Vec<Cause>, values_too: bool) {
    let Some(m) = m.as_object() else { return };
    for (k, v) in m {
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && name.bytes().next().map(|b| b.is_ascii_alphanumeric()).unwrap_or(false)
            && name.bytes().last().map(|b| b.is_ascii_alphanumeric()).unwrap_or(false);
        if !name_ok || prefix.map(|p| !is_dns1123_subdomain(p)).unwrap_or(false) {
            causes.push(Cause::invalid(field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        if values_too {
            let s = v.as_str().unwrap_or("");
            let ok = s.is_empty()
                || (s.len() <= 63
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                    && s.bytes().next().map(|b| b.is_ascii_alphanumeric()).unwrap_or(false)
                    && s.bytes().last().map(|b| b.is_ascii_alphanumeric()).unwrap_or(false));
            if !ok {
                causes.push(Cause::invalid(field, s, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
}

fn min0(obj: &Value, path: &[&str], field: &str, causes: &mut Vec<Cause>) {
    let mut v = obj;
    for p in path {
        v = &v[*p];
    }
    if let Some(n) = v.as_i64() {
        if n < 0 {
            causes.push(Cause::invalid(field, n, "must be greater than or equal to 0"));
        }
    }
}

fn validate_containers(spec: &Value, base: &str, causes: &mut Vec<Cause>) {
    match spec["containers"].as_array() {
        None => causes.push(Cause::required(format!("{base}.containers"))),
        Some(cs) if cs.is_empty() => causes.push(Cause::required(format!("{base}.containers"))),
        Some(cs) => {
            let mut seen = std::collections::HashSet::new();
            for (i, c) in cs.iter().enumerate() {
                let name = c["name"].as_str().unwrap_or("");
                if name.is_empty() {
                    causes.push(Cause::required(format!("{base}.containers[{i}].name")));
                } else if !is_dns1123_label(name) {
                    causes.push(Cause::invalid(format!("{base}.containers[{i}].name"), name, "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
                } else if !seen.insert(name.to_string()) {
                    causes.push(Cause::duplicate(format!("{base}.containers[{i}].name"), name));
                }
                if c["image"].as_str().map(str::trim).unwrap_or("").is_empty() {
                    causes.push(Cause::required(format!("{base}.containers[{i}].image")));
                }
            }
        }
    }
}

fn selector_matches_template(obj: &Value, causes: &mut Vec<Cause>) {
    let sel = &obj["spec"]["selector"];
    let labels = obj["spec"]["template"]["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    match crate::selectors::LabelSelector::from_json(sel) {
        Ok(s) if sel.is_null() || s.is_empty() => causes.push(Cause::required("spec.selector")),
        Ok(s) => {
            if !s.matches(&labels) {
                causes.push(Cause::invalid("spec.template.metadata.labels", format!("{labels:?}").replace('"', ""), "`selector` does not match template `labels`"));
            }
        }
        Err(e) => causes.push(Cause::invalid("spec.selector", sel, &e)),
    }
}

/// Kind-specific validation of a whole object (create and update).
pub fn validate(res: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_label_map("metadata.labels", &obj["metadata"]["labels"], &mut causes, true);
    validate_label_map("metadata.annotations", &obj["metadata"]["annotations"], &mut causes, false);
    if let (None, Some(schema)) = (&res.typed, &res.crd_schema) {
        for e in crate::crd_schema::validate(schema, obj) {
            causes.push(Cause { reason: e.reason, field: e.field, message: e.message });
        }
        return causes;
    }
    match (res.group.as_str(), res.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => causes.extend(crate::crd::validate_crd(obj)),
        ("", "Pod") => validate_containers(&obj["spec"], "spec", &mut causes),
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") => {
            min0(obj, &["spec", "replicas"], "spec.replicas", &mut causes);
            selector_matches_template(obj, &mut causes);
            validate_containers(&obj["spec"]["template"]["spec"], "spec.template.spec", &mut causes);
        }
        ("apps", "DaemonSet") => {
            selector_matches_template(obj, &mut causes);
            validate_containers(&obj["spec"]["template"]["spec"], "spec.template.spec", &mut causes);
        }
        ("batch", "Job") => {
            min0(obj, &["spec", "parallelism"], "spec.parallelism", &mut causes);
            min0(obj, &["spec", "completions"], "spec.completions", &mut causes);
            min0(obj, &["spec", "backoffLimit"], "spec.backoffLimit", &mut causes);
            validate_containers(&obj["spec"]["template"]["spec"], "spec.template.spec", &mut causes);
            let rp = obj["spec"]["template"]["spec"]["restartPolicy"].as_str().unwrap_or("");
            if rp != "Never" && rp != "OnFailure" {
                causes.push(Cause::not_supported("spec.template.spec.restartPolicy", rp, &["OnFailure", "Never"]));
            }
        }
        ("batch", "CronJob") => {
            if obj["spec"]["schedule"].as_str().unwrap_or("").trim().is_empty() {
                causes.push(Cause::required("spec.schedule"));
            }
            validate_containers(&obj["spec"]["jobTemplate"]["spec"]["template"]["spec"], "spec.jobTemplate.spec.template.spec", &mut causes);
        }
        ("", "Service") => {
            let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
                causes.push(Cause::not_supported("spec.type", ty, &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]));
            }
            if ty != "ExternalName" && obj["spec"]["ports"].as_array().map(|a| a.is_empty()).unwrap_or(true) && obj["spec"]["clusterIP"].as_str() != Some("None") {
                causes.push(Cause::required("spec.ports"));
            }
            if let Some(ports) = obj["spec"]["ports"].as_array() {
                for (i, p) in ports.iter().enumerate() {
                    let port = p["port"].as_i64().unwrap_or(0);
                    if !(1..=65535).contains(&port) {
                        causes.push(Cause::invalid(format!("spec.ports[{i}].port"), port, "must be between 1 and 65535, inclusive"));
                    }
                    if ports.len() > 1 && p["name"].as_str().unwrap_or("").is_empty() {
                        causes.push(Cause::required(format!("spec.ports[{i}].name")));
                    }
                }
            }
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            let name = obj["metadata"]["name"].as_str().unwrap_or("");
            let value = obj["value"].as_i64().unwrap_or(0);
            let system = SYSTEM_PRIORITY_CLASSES.iter().any(|(n, v)| *n == name && *v == value);
            if !system {
                if name.starts_with("system-") {
                    causes.push(Cause::forbidden("metadata.name", "priority class names with 'system-' prefix are reserved"));
                }
                if value > HIGHEST_USER_PRIORITY {
                    causes.push(Cause::forbidden("value", &format!("maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}")));
                }
            }
            if let Some(p) = obj["preemptionPolicy"].as_str() {
                if p != "Never" && p != "PreemptLowerPriority" {
                    causes.push(Cause::not_supported("preemptionPolicy", p, &["Never", "PreemptLowerPriority"]));
                }
            }
        }
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(m) = obj[field].as_object() {
                    for k in m.keys() {
                        let ok = !k.is_empty() && k.len() <= 253 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
                        if !ok {
                            causes.push(Cause::invalid(format!("{field}[{k}]"), k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// The PriorityClasses every cluster has (name, value), created at bootstrap.
pub const SYSTEM_PRIORITY_CLASSES: [(&str, i64); 2] = [("system-node-critical", 2_000_001_000), ("system-cluster-critical", 2_000_000_000)];
/// The highest priority a user-defined PriorityClass may have.
pub const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;

/// Fields that may not change once set (besides name, namespace and uid).
pub fn immutable_fields(res: &ResourceDef, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut check = |path: &[&str], field: &str| {
        let (mut a, mut b) = (old, new);
        for p in path {
            a = &a[*p];
            b = &b[*p];
        }
        if !a.is_null() && a != b {
            causes.push(Cause::immutable(field));
        }
    };
    match (res.group.as_str(), res.kind.as_str()) {
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "DaemonSet") | ("apps", "StatefulSet") => check(&["spec", "selector"], "spec.selector"),
        ("", "Service") => {
            // Allocations happen at create: the type, the IP and node ports stay as allocated.
            if old["spec"]["type"] != new["spec"]["type"] {
                causes.push(Cause::forbidden("spec.type", "changing the type of an existing Service is not supported yet: delete and re-create it"));
            }
            if old["spec"]["clusterIP"] != new["spec"]["clusterIP"] {
                causes.push(Cause::immutable("spec.clusterIP"));
            }
            let held: Vec<&Value> = old["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| p.get("nodePort")).collect();
            for (i, p) in new["spec"]["ports"].as_array().into_iter().flatten().enumerate() {
                if let Some(np) = p.get("nodePort").filter(|v| !v.is_null()) {
                    if !held.contains(&np) {
                        causes.push(Cause::invalid(format!("spec.ports[{i}].nodePort"), np, "node ports are allocated when the Service is created and cannot be changed"));
                    }
                }
            }
        }
        ("batch", "Job") => check(&["spec", "selector"], "spec.selector"),
        ("scheduling.k8s.io", "PriorityClass") => {
            check(&["value"], "value");
            check(&["preemptionPolicy"], "preemptionPolicy");
        }
        ("", "Pod") => {
            // A pod's spec is fixed once created, except images, deadlines, added tolerations,
            // removed scheduling gates, and the node it is bound to.
            const MUTABLE: [&str; 5] = ["activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates", "nodeName"];
            let masked = |v: &Value| {
                let mut s = v["spec"].clone();
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                            c.remove("image");
                        }
                    }
                }
                if let Some(m) = s.as_object_mut() {
                    // nodeName is checked on its own below.
                    for k in MUTABLE {
                        m.remove(k);
                    }
                }
                // A null field and a missing one are the same field (older versions stored some
                // nulls).
                strip_nulls(&mut s);
                s
            };
            // Cheap first: the fields other than the mutable ones are usually equal as they
            // are (status writes, bindings), with no copy; only a difference there needs the
            // masked comparison (images, nulls).
            let (a, b) = (&old["spec"], &new["spec"]);
            let same = match (a.as_object(), b.as_object()) {
                (Some(a), Some(b)) => {
                    let differs = |x: &serde_json::Map<String, Value>, y: &serde_json::Map<String, Value>| x.iter().any(|(k, v)| !MUTABLE.contains(&k.as_str()) && y.get(k) != Some(v));
                    !differs(a, b) && !differs(b, a)
                }
                _ => a == b,
            };
            if !same && masked(old) != masked(new) {
                causes.push(Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
            // Unbound to bound is allowed (binding); a bound pod stays where it is.
            let was = old["spec"]["nodeName"].as_str().unwrap_or("");
            if !was.is_empty() && new["spec"]["nodeName"].as_str().unwrap_or("") != was {
                causes.push(Cause::immutable("spec.nodeName"));
            }
        }
        ("", "Secret") | ("", "ConfigMap") => {
            if old["immutable"].as_bool() == Some(true) {
                check(&["data"], "data");
            }
        }
        _ => {}
    }
    causes
}

/// Removes null members of objects, recursively.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// An update that leaves out a Service's allocated IP or node ports keeps them (clients send
/// manifests without them), as Kubernetes does.
pub fn keep_service_allocations(old: &Value, new: &mut Value) {
    if !new["spec"].is_object() {
        return;
    }
    for k in ["clusterIP", "clusterIPs"] {
        if new["spec"][k].is_null() || new["spec"][k] == "" {
            if let Some(v) = old["spec"].get(k) {
                new["spec"][k] = v.clone();
            }
        }
    }
    let old_ports: Vec<Value> = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if let Some(ports) = new["spec"]["ports"].as_array_mut() {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            if p.get("nodePort").map(Value::is_null).unwrap_or(true) {
                let same = old_ports.iter().find(|o| o["port"] == p.get("port").cloned().unwrap_or(Value::Null) && o["protocol"] == p.get("protocol").cloned().unwrap_or(json!("TCP")));
                if let Some(np) = same.and_then(|o| o.get("nodePort")) {
                    p.insert("nodePort".into(), np.clone());
                }
            }
        }
    }
}

/// Grace period for deleting a pod: forced to 0 for unscheduled or finished pods.
pub fn pod_grace(pod: &Value, requested: Option<i64>) -> i64 {
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    if pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty() || phase == "Succeeded" || phase == "Failed" {
        return 0;
    }
    requested.unwrap_or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_spec_changes_count_for_generation() {
        let a = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": 1}, "status": {"replicas": 0}});
        let mut b = a.clone();
        b["metadata"]["labels"] = json!({"a": "b"});
        b["status"]["replicas"] = json!(1);
        assert!(!spec_differs(&a, &b), "metadata and status are not the spec");
        b["spec"]["replicas"] = json!(2);
        assert!(spec_differs(&a, &b));
        let mut c = a.clone();
        c["template"] = json!({});
        assert!(spec_differs(&a, &c) && spec_differs(&c, &a), "a top-level field added or gone");
        assert!(spec_differs(&json!(1), &json!(2)) && !spec_differs(&json!(1), &json!(1)));
    }

    #[test]
    fn secret_string_data_is_merged_into_data() {
        let res = crate::catalog::Catalog::new().get().lookup("", "v1", "secrets").expect("secrets");
        let mut s = json!({"data": {"a": "eA==", "b": "eA=="}, "stringData": {"b": "hi"}});
        apply_defaults(&res, &mut s);
        assert_eq!(s, json!({"data": {"a": "eA==", "b": "aGk="}, "type": "Opaque"}));
    }

    #[test]
    fn qos_follows_requests_and_limits() {
        assert_eq!(qos_class(&json!({"spec":{"containers":[{"name":"a"}]}})), "BestEffort");
        assert_eq!(qos_class(&json!({"spec":{"containers":[{"resources":{"requests":{"cpu":"500m","memory":"256Mi"},"limits":{"cpu":"1","memory":"512Mi"}}}]}})), "Burstable");
        assert_eq!(qos_class(&json!({"spec":{"containers":[{"resources":{"limits":{"cpu":"1","memory":"512Mi"}}}]}})), "Guaranteed");
    }

    #[test]
    fn jobs_get_a_selector_on_their_uid_unless_manual() {
        let mut job = json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {"template": {"spec": {"containers": []}}}});
        assert!(generate_job_selector(&mut job).is_none());
        assert_eq!(job["spec"]["selector"], json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}}));
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        assert_eq!((labels["controller-uid"].as_str(), labels["job-name"].as_str(), labels["batch.kubernetes.io/job-name"].as_str()), (Some("u1"), Some("pi"), Some("pi")));
        let mut given = json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {"selector": {"matchLabels": {"a": "b"}}}});
        assert_eq!(generate_job_selector(&mut given).map(|c| c.field), Some("spec.selector".to_string()));
        let mut manual = json!({"metadata": {"name": "pi", "uid": "u1"}, "spec": {"manualSelector": true, "selector": {"matchLabels": {"a": "b"}}}});
        assert!(generate_job_selector(&mut manual).is_none());
        assert_eq!(manual["spec"]["selector"], json!({"matchLabels": {"a": "b"}}));
    }

    #[test]
    fn priority_classes_are_bounded_and_system_names_reserved() {
        let res = crate::catalog::Catalog::new().get().lookup("scheduling.k8s.io", "v1", "priorityclasses").expect("priorityclasses");
        let pc = |name: &str, value: i64| json!({"metadata": {"name": name}, "value": value});
        assert!(validate(&res, &pc("high", 1_000_000_000)).is_empty());
        assert_eq!(validate(&res, &pc("huge", 1_000_000_001)).len(), 1);
        assert!(validate(&res, &pc("system-node-critical", 2_000_001_000)).is_empty());
        assert_eq!(validate(&res, &pc("system-mine", 5)).len(), 1);
    }

    #[test]
    fn names_are_checked_as_label_or_subdomain_by_kind() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_dns1123_subdomain("a.b"));
        assert!(!is_dns1123_subdomain("-a"));
    }

    #[test]
    fn a_pod_spec_changes_only_in_images_and_binding() {
        let res = crate::catalog::Catalog::new().get().lookup("", "v1", "pods").expect("pods");
        let old = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}]}});
        let image = json!({"spec": {"containers": [{"name": "a", "image": "x:2"}]}});
        assert!(immutable_fields(&res, &old, &image).is_empty());
        let bound = json!({"spec": {"nodeName": "n1", "containers": [{"name": "a", "image": "x:1"}]}});
        assert!(immutable_fields(&res, &old, &bound).is_empty(), "binding");
        let moved = json!({"spec": {"nodeName": "n2", "containers": [{"name": "a", "image": "x:1"}]}});
        assert_eq!(immutable_fields(&res, &bound, &moved).len(), 1);
        let added = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y"}]}});
        assert_eq!(immutable_fields(&res, &old, &added)[0].field, "spec");
    }

    #[test]
    fn pod_grace_is_zero_for_unscheduled_or_finished_pods() {
        assert_eq!(pod_grace(&json!({"spec":{}}), None), 0);
        assert_eq!(pod_grace(&json!({"spec":{"nodeName":"n1"}}), None), 30);
        assert_eq!(pod_grace(&json!({"spec":{"nodeName":"n1","terminationGracePeriodSeconds":5}}), None), 5);
        assert_eq!(pod_grace(&json!({"spec":{"nodeName":"n1"},"status":{"phase":"Succeeded"}}), Some(10)), 0);
    }
}
