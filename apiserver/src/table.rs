//! Server-side printing: builds meta.k8s.io/v1 Table responses with the same
//! columns and cell formats a Kubernetes 1.33 API server produces, so that
//! `kubectl get` output looks identical.
//!
//! Objects are handled in their JSON wire form. Like the upstream server, rows
//! always carry the wide (priority 1) cells; kubectl hides them unless `-o wide`.
//! Nothing here panics on malformed input: missing or mistyped fields fall back
//! to the values an empty (defaulted) Go struct would print.

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// One column definition as in meta.k8s.io/v1 TableColumnDefinition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// "string" | "integer" | "boolean" | "date", as upstream declares it.
    pub type_: &'static str,
    /// "name" for the Name column, else "".
    pub format: &'static str,
    pub description: &'static str,
    pub priority: i32,
}

// ---------------------------------------------------------------------------
// Column definitions
// ---------------------------------------------------------------------------

const S: &str = "string";
const I: &str = "integer";
const B: &str = "boolean";
const D: &str = "date";

const NAME_DESC: &str = "Name of the object, unique within its namespace (or cluster for cluster-scoped kinds).";
const AGE_DESC: &str = "Time elapsed since the object was created.";
const CONTAINERS_DESC: &str = "Names of the containers in the pod template.";
const IMAGES_DESC: &str = "Images used by the containers in the pod template.";
const SELECTOR_DESC: &str = "Label selector choosing the pods this object manages.";

fn c(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column { name, type_, format: "", description, priority: 0 }
}

/// A priority-1 column: only shown by kubectl with `-o wide`.
fn w(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column { priority: 1, ..c(name, type_, description) }
}

fn name_col() -> Column {
    Column { format: "name", ..c("Name", S, NAME_DESC) }
}

fn age_col() -> Column {
    c("Age", S, AGE_DESC)
}

fn template_cols(selector: bool) -> Vec<Column> {
    let mut v = vec![w("Containers", S, CONTAINERS_DESC), w("Images", S, IMAGES_DESC)];
    if selector {
        v.push(w("Selector", S, SELECTOR_DESC));
    }
    v
}

/// Columns for kind `kind` (e.g. "Pod"). CRD additionalPrinterColumns are the
/// caller's business; unknown kinds get Name and Age.
pub fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            name_col(),
            c("Ready", S, "Ready containers out of all containers in the pod."),
            c("Status", S, "Summarised state of the pod and its containers."),
            c("Restarts", S, "Container restarts in the pod, and how long ago the latest one happened."),
            age_col(),
            w("IP", S, "IP address assigned to the pod."),
            w("Node", S, "Node the pod is bound to."),
            w("Nominated Node", S, "Node nominated by the scheduler for preemption."),
            w("Readiness Gates", S, "Satisfied readiness gates out of all readiness gates."),
        ],
        "PodTemplate" => vec![
            name_col(),
            c("Containers", S, CONTAINERS_DESC),
            c("Images", S, IMAGES_DESC),
            c("Pod Labels", S, "Labels given to pods created from the template."),
        ],
        "PodDisruptionBudget" => vec![
            name_col(),
            c("Min Available", S, "Pods that must stay available."),
            c("Max Unavailable", S, "Pods that may be unavailable."),
            c("Allowed Disruptions", I, "Pods that may be disrupted right now."),
            age_col(),
        ],
        "ReplicationController" | "ReplicaSet" => {
            let mut v = vec![
                name_col(),
                c("Desired", I, "Requested number of replicas."),
                c("Current", I, "Replicas currently present."),
                c("Ready", I, "Replicas that are ready."),
                age_col(),
            ];
            v.extend(template_cols(true));
            v
        }
        "DaemonSet" => {
            let mut v = vec![
                name_col(),
                c("Desired", I, "Nodes that should run the daemon pod."),
                c("Current", I, "Nodes running at least one daemon pod."),
                c("Ready", I, "Nodes whose daemon pod is ready."),
                c("Up-to-date", I, "Nodes running the current template."),
                c("Available", I, "Nodes whose daemon pod is available."),
                c("Node Selector", S, "Node labels a node must carry to run the pod."),
                age_col(),
            ];
            v.extend(template_cols(true));
            v
        }
        "Job" => {
            let mut v = vec![
                name_col(),
                c("Status", S, "Overall state of the job."),
                c("Completions", S, "Succeeded pods out of required completions."),
                c("Duration", S, "How long the job ran or has been running."),
                age_col(),
            ];
            v.extend(template_cols(true));
            v
        }
        "CronJob" => {
            let mut v = vec![
                name_col(),
                c("Schedule", S, "Cron schedule."),
                c("Timezone", S, "Time zone the schedule is evaluated in."),
                c("Suspend", B, "Whether new runs are suspended."),
                c("Active", I, "Jobs currently running."),
                c("Last Schedule", S, "Time since a job was last scheduled."),
                age_col(),
            ];
            v.extend(template_cols(true));
            v
        }
        "Service" => vec![
            name_col(),
            c("Type", S, "How the service is exposed."),
            c("Cluster-IP", S, "Cluster-internal virtual IP."),
            c("External-IP", S, "Addresses reachable from outside the cluster."),
            c("Port(s)", S, "Exposed ports, with node ports when allocated."),
            age_col(),
            w("Selector", S, "Labels selecting the backing pods."),
        ],
        "Ingress" => vec![
            name_col(),
            c("Class", S, "IngressClass handling this ingress."),
            c("Hosts", S, "Hosts matched by the rules."),
            c("Address", S, "Load-balancer addresses."),
            c("Ports", S, "Ports served."),
            age_col(),
        ],
        "IngressClass" => vec![
            name_col(),
            c("Controller", S, "Controller implementing this class."),
            c("Parameters", S, "Resource holding extra configuration."),
            age_col(),
        ],
        "StatefulSet" => {
            let mut v = vec![name_col(), c("Ready", S, "Ready replicas out of desired replicas."), age_col()];
            v.extend(template_cols(false));
            v
        }
        "Endpoints" => vec![name_col(), c("Endpoints", S, "Backend addresses and ports."), age_col()],
        "EndpointSlice" => vec![
            name_col(),
            c("AddressType", S, "Address family of the endpoints."),
            c("Ports", S, "Ports of the slice."),
            c("Endpoints", S, "Endpoint addresses."),
            age_col(),
        ],
        "Node" => vec![
            name_col(),
            c("Status", S, "Readiness and schedulability of the node."),
            c("Roles", S, "Roles taken from node-role labels."),
            age_col(),
            c("Version", S, "Kubelet version."),
            w("Internal-IP", S, "First internal address."),
            w("External-IP", S, "First external address."),
            w("OS-Image", S, "Operating system image."),
            w("Kernel-Version", S, "Kernel version."),
            w("Container-Runtime", S, "Container runtime and version."),
        ],
        "Event" => vec![
            c("Last Seen", S, "Time since the event was last observed."),
            c("Type", S, "Event type (Normal or Warning)."),
            c("Reason", S, "Short machine-readable reason."),
            c("Object", S, "Object the event is about."),
            w("Subobject", S, "Field path within the object."),
            w("Source", S, "Component that reported the event."),
            c("Message", S, "Human-readable description."),
            w("First Seen", S, "Time since the event was first observed."),
            w("Count", S, "Number of occurrences."),
            Column { format: "name", ..w("Name", S, NAME_DESC) },
        ],
        "Namespace" => vec![name_col(), c("Status", S, "Lifecycle phase of the namespace."), age_col()],
        "Secret" => vec![
            name_col(),
            c("Type", S, "Secret type."),
            c("Data", S, "Number of data entries."),
            age_col(),
        ],
        "ServiceAccount" => vec![name_col(), c("Secrets", S, "Number of referenced secrets."), age_col()],
        "ConfigMap" => vec![name_col(), c("Data", S, "Number of data and binaryData entries."), age_col()],
        "PersistentVolume" => vec![
            name_col(),
            c("Capacity", S, "Storage capacity."),
            c("Access Modes", S, "Supported access modes."),
            c("Reclaim Policy", S, "What happens when the claim is released."),
            c("Status", S, "Lifecycle phase."),
            c("Claim", S, "Claim bound to the volume."),
            c("StorageClass", S, "Storage class of the volume."),
            c("VolumeAttributesClass", S, "Volume attributes class of the volume."),
            c("Reason", S, "Reason for the current phase."),
            age_col(),
            w("VolumeMode", S, "Filesystem or Block."),
        ],
        "PersistentVolumeClaim" => vec![
            name_col(),
            c("Status", S, "Lifecycle phase."),
            c("Volume", S, "Bound volume."),
            c("Capacity", S, "Capacity of the bound volume."),
            c("Access Modes", S, "Access modes of the bound volume."),
            c("StorageClass", S, "Requested storage class."),
            c("VolumeAttributesClass", S, "Requested volume attributes class."),
            age_col(),
            w("VolumeMode", S, "Filesystem or Block."),
        ],
        "StorageClass" => vec![
            name_col(),
            c("Provisioner", S, "Volume plugin that provisions volumes."),
            c("ReclaimPolicy", S, "Reclaim policy for provisioned volumes."),
            c("VolumeBindingMode", S, "When volumes are bound."),
            c("AllowVolumeExpansion", S, "Whether volumes may be expanded."),
            age_col(),
        ],
        "ComponentStatus" => vec![
            name_col(),
            c("Status", S, "Health of the component."),
            c("Message", S, "Message from the health check."),
            c("Error", S, "Error from the health check."),
        ],
        "Deployment" => {
            let mut v = vec![
                name_col(),
                c("Ready", S, "Ready replicas out of desired replicas."),
                c("Up-to-date", S, "Replicas running the current template."),
                c("Available", S, "Replicas available to serve."),
                age_col(),
            ];
            v.extend(template_cols(true));
            v
        }
        "HorizontalPodAutoscaler" => vec![
            name_col(),
            c("Reference", S, "Workload being scaled."),
            c("Targets", S, "Current and target metric values."),
            c("MinPods", S, "Lower replica limit."),
            c("MaxPods", S, "Upper replica limit."),
            c("Replicas", S, "Current replica count."),
            age_col(),
        ],
        "NetworkPolicy" => vec![name_col(), c("Pod-Selector", S, "Pods the policy applies to."), age_col()],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name_col(),
            c("Role", S, "Role granted by the binding."),
            age_col(),
            w("Users", S, "Users bound."),
            w("Groups", S, "Groups bound."),
            w("ServiceAccounts", S, "Service accounts bound."),
        ],
        "CertificateSigningRequest" => vec![
            name_col(),
            age_col(),
            c("SignerName", S, "Signer asked to sign the request."),
            c("Requestor", S, "User that created the request."),
            c("RequestedDuration", S, "Requested certificate lifetime."),
            c("Condition", S, "Approval and issuance state."),
        ],
        "Lease" => vec![name_col(), c("Holder", S, "Current holder of the lease."), age_col()],
        "ControllerRevision" => vec![
            name_col(),
            c("Controller", S, "Object owning the revision."),
            c("Revision", S, "Revision number."),
            age_col(),
        ],
        "ResourceQuota" => vec![
            name_col(),
            c("Request", S, "Used and hard amounts of non-limit resources."),
            c("Limit", S, "Used and hard amounts of limit resources."),
            age_col(),
        ],
        "PriorityClass" => vec![
            name_col(),
            c("Value", I, "Priority value."),
            c("Global-Default", B, "Whether this is the default priority class."),
            age_col(),
            c("PreemptionPolicy", S, "Whether pods of this class may preempt others."),
        ],
        "RuntimeClass" => vec![name_col(), c("Handler", S, "CRI handler for the class."), age_col()],
        "VolumeAttachment" => vec![
            name_col(),
            Column { format: "name", ..c("Attacher", S, "Driver attaching the volume.") },
            c("PV", S, "Persistent volume being attached."),
            c("Node", S, "Node the volume is attached to."),
            c("Attached", B, "Whether the attach operation succeeded."),
            age_col(),
        ],
        "CSINode" => vec![name_col(), c("Drivers", I, "Number of CSI drivers registered on the node."), age_col()],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            vec![name_col(), c("Webhooks", I, "Number of webhooks in the configuration."), age_col()]
        }
        "ServiceCIDR" => vec![name_col(), c("CIDRs", S, "CIDR ranges served."), age_col()],
        // Upstream serves these through the generic table convertor.
        "Role" | "ClusterRole" | "LimitRange" | "CustomResourceDefinition" => {
            vec![name_col(), c("Created At", D, "Creation time of the object.")]
        }
        // Same shape as a custom resource without additionalPrinterColumns.
        _ => vec![name_col(), c("Age", D, AGE_DESC)],
    }
}

// ---------------------------------------------------------------------------
// JSON access helpers (never panic)
// ---------------------------------------------------------------------------

static NULL: Value = Value::Null;

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k).unwrap_or(&NULL);
    }
    cur
}

fn st<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    get(v, path).as_str().unwrap_or("")
}

fn arr<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path).as_array().map(|a| a.as_slice()).unwrap_or(&[])
}

fn map_len(v: &Value, path: &[&str]) -> usize {
    get(v, path).as_object().map(|m| m.len()).unwrap_or(0)
}

fn int(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    if let Some(u) = v.as_u64() {
        return Some(i64::try_from(u).unwrap_or(i64::MAX));
    }
    match v.as_f64() {
        Some(f) if f.is_finite() => Some(f as i64),
        _ => None,
    }
}

fn int_at(v: &Value, path: &[&str]) -> i64 {
    int(get(v, path)).unwrap_or(0)
}

fn bool_at(v: &Value, path: &[&str]) -> bool {
    get(v, path).as_bool().unwrap_or(false)
}

fn present(v: &Value, path: &[&str]) -> bool {
    !get(v, path).is_null()
}

fn is_obj(v: &Value, path: &[&str]) -> bool {
    get(v, path).is_object()
}

/// First non-null of several paths (events.k8s.io/v1 renamed core/v1 fields).
fn pick<'a>(v: &'a Value, paths: &[&[&str]]) -> &'a Value {
    paths.iter().map(|p| get(v, p)).find(|x| !x.is_null()).unwrap_or(&NULL)
}

/// resource.Quantity wire form; a nil pointer prints "<nil>" like Go.
fn qty_ptr(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "<nil>".to_string(),
    }
}

/// A non-pointer Quantity: the zero value prints "0".
fn qty(v: &Value) -> String {
    match v {
        Value::Null => "0".to_string(),
        other => qty_ptr(other),
    }
}

/// intstr.IntOrString as printed by its String() method.
fn int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => int(other).unwrap_or(0).to_string(),
    }
}

fn meta_name(obj: &Value) -> String {
    st(obj, &["metadata", "name"]).to_string()
}

fn deleting(obj: &Value) -> bool {
    present(obj, &["metadata", "deletionTimestamp"])
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".to_string() } else { s }
}

// ---------------------------------------------------------------------------
// Time handling
// ---------------------------------------------------------------------------

const NS: i128 = 1_000_000_000;
/// Go's zero time.Time (0001-01-01T00:00:00Z) in Unix seconds; it means "unset".
const GO_ZERO_UNIX: i128 = -62_135_596_800;

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Parses RFC3339 (optional fractional seconds, "Z" or ±hh:mm offset) into
/// nanoseconds since the Unix epoch.
fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, &ch| {
            if ch.is_ascii_digit() { Some(acc * 10 + i64::from(ch - b'0')) } else { None }
        })
    };
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let min = num(14, 2)?;
    let sec = num(17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mdays = [31, if is_leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&month) || hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    if day < 1 || day > mdays[(month - 1) as usize] {
        return None;
    }
    let mut i = 19;
    let mut frac: i128 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Keep nanosecond precision; extra digits are truncated as Go does.
        let mut scale = NS / 10;
        for &ch in &b[start..i] {
            frac += i128::from(ch - b'0') * scale;
            scale /= 10;
        }
    }
    let offset: i64 = match &b[i..] {
        [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() - i == 6 && b[i + 3] == b':' => {
            let oh = num(i + 1, 2)?;
            let om = num(i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = i128::from(days) * 86_400 + i128::from(hour * 3600 + min * 60 + sec - offset);
    Some(secs * NS + frac)
}

/// Timestamp at `path`, or None when absent, unparsable or Go's zero time.
fn ts_at(v: &Value, path: &[&str]) -> Option<i128> {
    let t = parse_rfc3339(get(v, path).as_str()?)?;
    if t == GO_ZERO_UNIX * NS { None } else { Some(t) }
}

fn since(t: Option<i128>, now_unix: i64) -> String {
    match t {
        None => "<unknown>".to_string(),
        Some(t) => human_duration_nanos(i128::from(now_unix) * NS - t),
    }
}

fn format_rfc3339_utc(nanos: i128) -> String {
    let secs = nanos.div_euclid(NS);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Mirrors duration.HumanDuration on a nanosecond duration.
fn human_duration_nanos(d: i128) -> String {
    let seconds = d / NS; // truncation toward zero, like int(d.Seconds())
    // Up to two seconds in the future is tolerated as clock skew.
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = d / (60 * NS);
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = d / (3600 * NS);
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{}h", hours / 24, h) };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{}d", hours / 24 / 365, dy)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Human duration like Kubernetes' duration.HumanDuration.
pub fn human_duration(secs: i64) -> String {
    human_duration_nanos(i128::from(secs) * NS)
}

/// Age cell for an RFC3339 timestamp relative to `now_unix`.
pub fn age(ts: Option<&str>, now_unix: i64) -> String {
    let t = ts.and_then(parse_rfc3339).filter(|t| *t != GO_ZERO_UNIX * NS);
    since(t, now_unix)
}

fn age_of(obj: &Value, now_unix: i64) -> String {
    since(ts_at(obj, &["metadata", "creationTimestamp"]), now_unix)
}

// ---------------------------------------------------------------------------
// Shared formatters
// ---------------------------------------------------------------------------

/// labels.FormatLabels: sorted "k=v" pairs or "<none>".
fn format_labels(v: &Value) -> String {
    let Some(m) = v.as_object() else { return "<none>".to_string() };
    let mut pairs: Vec<String> = m.iter().map(|(k, v)| format!("{}={}", k, v.as_str().unwrap_or(""))).collect();
    pairs.sort();
    none_if_empty(pairs.join(","))
}

/// metav1.LabelSelectorAsSelector(..).String(); Err for selectors Go rejects.
fn selector_string(sel: &Value) -> Result<String, ()> {
    let Some(m) = sel.as_object() else {
        return if sel.is_null() { Ok(String::new()) } else { Err(()) };
    };
    let mut reqs: Vec<(String, String)> = Vec::new();
    match m.get("matchLabels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(ml)) => {
            for (k, v) in ml {
                let v = v.as_str().ok_or(())?;
                reqs.push((k.clone(), format!("{k}={v}")));
            }
        }
        Some(_) => return Err(()),
    }
    match m.get("matchExpressions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(exprs)) => {
            for e in exprs {
                let key = st(e, &["key"]);
                let mut vals: Vec<&str> = arr(e, &["values"]).iter().filter_map(|x| x.as_str()).collect();
                // Values are printed sorted, as upstream normalises them.
                vals.sort_unstable();
                let text = match st(e, &["operator"]) {
                    "In" if !vals.is_empty() => format!("{key} in ({})", vals.join(",")),
                    "NotIn" if !vals.is_empty() => format!("{key} notin ({})", vals.join(",")),
                    "Exists" if vals.is_empty() => key.to_string(),
                    "DoesNotExist" if vals.is_empty() => format!("!{key}"),
                    _ => return Err(()),
                };
                reqs.push((key.to_string(), text));
            }
        }
        Some(_) => return Err(()),
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs.into_iter().map(|r| r.1).collect::<Vec<_>>().join(","))
}

/// metav1.FormatLabelSelector: "<none>" when empty, "<error>" when invalid.
fn format_label_selector(sel: &Value) -> String {
    match selector_string(sel) {
        Ok(s) => none_if_empty(s),
        Err(()) => "<error>".to_string(),
    }
}

/// Container names and images, comma-joined.
fn layout_containers(containers: &[Value]) -> (String, String) {
    let names: Vec<&str> = containers.iter().map(|c| st(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| st(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

fn list_with_more(list: Vec<String>, more: bool, count: usize, max: usize) -> String {
    let ret = list.join(",");
    if more {
        return format!("{} + {} more...", ret, count.saturating_sub(max));
    }
    if ret.is_empty() { "<unset>".to_string() } else { ret }
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// GetAccessModesAsString: fixed order, duplicates collapsed.
fn access_modes(modes: &[Value]) -> String {
    let has = |m: &str| modes.iter().any(|x| x.as_str() == Some(m));
    let mut out = Vec::new();
    for (mode, short) in [
        ("ReadWriteOnce", "RWO"),
        ("ReadOnlyMany", "ROX"),
        ("ReadWriteMany", "RWX"),
        ("ReadWriteOncePod", "RWOP"),
    ] {
        if has(mode) {
            out.push(short);
        }
    }
    out.join(",")
}

const BETA_STORAGE_CLASS_ANNOTATION: &str = "volume.beta.kubernetes.io/storage-class";

fn pv_class(obj: &Value) -> String {
    let ann = get(obj, &["metadata", "annotations", BETA_STORAGE_CLASS_ANNOTATION]);
    match ann.as_str() {
        Some(a) => a.to_string(),
        None => st(obj, &["spec", "storageClassName"]).to_string(),
    }
}

/// Lowercased kind-qualified name, as formatResourceName prints it.
fn group_kind_name(api_version: &str, kind: &str, name: &str) -> String {
    let group = match api_version.split_once('/') {
        Some((g, _)) => g,
        None => "",
    };
    if group.is_empty() && kind.is_empty() {
        return name.to_string();
    }
    let gk = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
    format!("{}/{}", gk.to_lowercase(), name)
}

// ---------------------------------------------------------------------------
// Per-kind cells
// ---------------------------------------------------------------------------

/// Cells of one row, same length and order as `columns(kind)`.
pub fn cells(kind: &str, obj: &Value, now_unix: i64) -> Vec<Value> {
    let name = meta_name(obj);
    let age = age_of(obj, now_unix);
    let spec = get(obj, &["spec"]);
    let status = get(obj, &["status"]);
    match kind {
        "Pod" => pod_cells(obj, now_unix),
        "PodTemplate" => {
            let (n, i) = layout_containers(arr(obj, &["template", "spec", "containers"]));
            vec![json!(name), json!(n), json!(i), json!(format_labels(get(obj, &["template", "metadata", "labels"])))]
        }
        "PodDisruptionBudget" => {
            let f = |k: &str| match get(spec, &[k]) {
                Value::Null => "N/A".to_string(),
                v => int_or_string(v),
            };
            vec![
                json!(name),
                json!(f("minAvailable")),
                json!(f("maxUnavailable")),
                json!(int_at(status, &["disruptionsAllowed"])),
                json!(age),
            ]
        }
        "ReplicationController" | "ReplicaSet" => {
            // Defaulting gives spec.replicas = 1 when omitted.
            let desired = int(get(spec, &["replicas"])).unwrap_or(1);
            let (n, i) = layout_containers(arr(spec, &["template", "spec", "containers"]));
            let sel = if kind == "ReplicaSet" {
                format_label_selector(get(spec, &["selector"]))
            } else {
                format_labels(get(spec, &["selector"]))
            };
            vec![
                json!(name),
                json!(desired),
                json!(int_at(status, &["replicas"])),
                json!(int_at(status, &["readyReplicas"])),
                json!(age),
                json!(n),
                json!(i),
                json!(sel),
            ]
        }
        "DaemonSet" => {
            let (n, i) = layout_containers(arr(spec, &["template", "spec", "containers"]));
            vec![
                json!(name),
                json!(int_at(status, &["desiredNumberScheduled"])),
                json!(int_at(status, &["currentNumberScheduled"])),
                json!(int_at(status, &["numberReady"])),
                json!(int_at(status, &["updatedNumberScheduled"])),
                json!(int_at(status, &["numberAvailable"])),
                json!(format_labels(get(spec, &["template", "spec", "nodeSelector"]))),
                json!(age),
                json!(n),
                json!(i),
                json!(format_label_selector(get(spec, &["selector"]))),
            ]
        }
        "Job" => job_cells(obj, &name, &age, now_unix),
        "CronJob" => {
            let last = match ts_at(status, &["lastScheduleTime"]) {
                None if !present(status, &["lastScheduleTime"]) => "<none>".to_string(),
                t => since(t, now_unix),
            };
            let tz = get(spec, &["timeZone"]).as_str().unwrap_or("<none>");
            // Defaulting sets suspend=false; a non-bool prints like a nil pointer.
            let suspend = match get(spec, &["suspend"]) {
                Value::Bool(true) => "True",
                Value::Bool(false) | Value::Null => "False",
                _ => "<unset>",
            };
            let tmpl = get(spec, &["jobTemplate", "spec"]);
            let (n, i) = layout_containers(arr(tmpl, &["template", "spec", "containers"]));
            vec![
                json!(name),
                json!(st(spec, &["schedule"])),
                json!(tz),
                json!(suspend),
                json!(arr(status, &["active"]).len()),
                json!(last),
                json!(age),
                json!(n),
                json!(i),
                json!(format_label_selector(get(tmpl, &["selector"]))),
            ]
        }
        "Service" => service_cells(obj, &name, &age),
        "Ingress" => {
            let class = get(spec, &["ingressClassName"]).as_str().unwrap_or("<none>");
            let ports = if arr(spec, &["tls"]).is_empty() { "80" } else { "80, 443" };
            vec![
                json!(name),
                json!(class),
                json!(format_ingress_hosts(arr(spec, &["rules"]))),
                json!(lb_ingress(arr(status, &["loadBalancer", "ingress"]))),
                json!(ports),
                json!(age),
            ]
        }
        "IngressClass" => {
            let p = get(spec, &["parameters"]);
            let params = if p.is_object() {
                let mut s = st(p, &["kind"]).to_string();
                if let Some(g) = get(p, &["apiGroup"]).as_str() {
                    s = format!("{s}.{g}");
                }
                format!("{}/{}", s, st(p, &["name"]))
            } else {
                "<none>".to_string()
            };
            vec![json!(name), json!(st(spec, &["controller"])), json!(params), json!(age)]
        }
        "StatefulSet" => {
            let desired = int(get(spec, &["replicas"])).unwrap_or(1);
            let ready = int_at(status, &["readyReplicas"]);
            let (n, i) = layout_containers(arr(spec, &["template", "spec", "containers"]));
            vec![json!(name), json!(format!("{ready}/{desired}")), json!(age), json!(n), json!(i)]
        }
        "Endpoints" => vec![json!(name), json!(format_endpoints(obj)), json!(age)],
        "EndpointSlice" => {
            let ports = arr(obj, &["ports"]);
            let mut list = Vec::new();
            for p in ports.iter().take(3) {
                let n = match (int(get(p, &["port"])), get(p, &["name"]).as_str()) {
                    (Some(port), _) => port.to_string(),
                    (None, Some(pname)) => pname.to_string(),
                    _ => "*".to_string(),
                };
                list.push(n);
            }
            let ports_s = list_with_more(list, ports.len() > 3, ports.len(), 3);
            let addrs: Vec<String> = arr(obj, &["endpoints"])
                .iter()
                .flat_map(|e| arr(e, &["addresses"]).iter())
                .map(|a| a.as_str().unwrap_or("").to_string())
                .collect();
            let count = addrs.len();
            let eps = list_with_more(addrs.into_iter().take(3).collect(), count > 3, count, 3);
            vec![json!(name), json!(st(obj, &["addressType"])), json!(ports_s), json!(eps), json!(age)]
        }
        "Node" => node_cells(obj, &name, &age),
        "Event" => event_cells(obj, &name, now_unix),
        "Namespace" => vec![json!(name), json!(st(status, &["phase"])), json!(age)],
        "Secret" => {
            let ty = get(obj, &["type"]).as_str().unwrap_or("Opaque");
            vec![json!(name), json!(ty), json!(map_len(obj, &["data"])), json!(age)]
        }
        "ServiceAccount" => vec![json!(name), json!(arr(obj, &["secrets"]).len()), json!(age)],
        "ConfigMap" => {
            vec![json!(name), json!(map_len(obj, &["data"]) + map_len(obj, &["binaryData"])), json!(age)]
        }
        "PersistentVolume" => {
            let claim = if is_obj(spec, &["claimRef"]) {
                format!("{}/{}", st(spec, &["claimRef", "namespace"]), st(spec, &["claimRef", "name"]))
            } else {
                String::new()
            };
            let phase = if deleting(obj) { "Terminating" } else { st(status, &["phase"]) };
            vec![
                json!(name),
                json!(qty(get(spec, &["capacity", "storage"]))),
                json!(access_modes(arr(spec, &["accessModes"]))),
                json!(st(spec, &["persistentVolumeReclaimPolicy"])),
                json!(phase),
                json!(claim),
                json!(pv_class(obj)),
                json!(get(spec, &["volumeAttributesClassName"]).as_str().unwrap_or("<unset>")),
                json!(st(status, &["reason"])),
                json!(age),
                json!(get(spec, &["volumeMode"]).as_str().unwrap_or("<unset>")),
            ]
        }
        "PersistentVolumeClaim" => {
            let phase = if deleting(obj) { "Terminating" } else { st(status, &["phase"]) };
            let volume = st(spec, &["volumeName"]);
            // Capacity and modes are only meaningful once bound.
            let (cap, modes) = if volume.is_empty() {
                (String::new(), String::new())
            } else {
                (qty(get(status, &["capacity", "storage"])), access_modes(arr(status, &["accessModes"])))
            };
            vec![
                json!(name),
                json!(phase),
                json!(volume),
                json!(cap),
                json!(modes),
                json!(pv_class(obj)),
                json!(get(spec, &["volumeAttributesClassName"]).as_str().unwrap_or("<unset>")),
                json!(age),
                json!(get(spec, &["volumeMode"]).as_str().unwrap_or("<unset>")),
            ]
        }
        "StorageClass" => {
            let is_default = |k: &str| st(obj, &["metadata", "annotations", k]) == "true";
            let mut n = name;
            if is_default("storageclass.kubernetes.io/is-default-class")
                || is_default("storageclass.beta.kubernetes.io/is-default-class")
            {
                n.push_str(" (default)");
            }
            vec![
                json!(n),
                json!(st(obj, &["provisioner"])),
                json!(get(obj, &["reclaimPolicy"]).as_str().unwrap_or("Delete")),
                json!(get(obj, &["volumeBindingMode"]).as_str().unwrap_or("Immediate")),
                json!(bool_at(obj, &["allowVolumeExpansion"])),
                json!(age),
            ]
        }
        "ComponentStatus" => {
            let cond = arr(obj, &["conditions"]).iter().find(|c| st(c, &["type"]) == "Healthy");
            let (s, m, e) = match cond {
                Some(c) => (
                    if st(c, &["status"]) == "True" { "Healthy" } else { "Unhealthy" },
                    st(c, &["message"]),
                    st(c, &["error"]),
                ),
                None => ("Unknown", "", ""),
            };
            vec![json!(name), json!(s), json!(m), json!(e)]
        }
        "Deployment" => {
            let desired = int(get(spec, &["replicas"])).unwrap_or(1);
            let ready = int_at(status, &["readyReplicas"]);
            let (n, i) = layout_containers(arr(spec, &["template", "spec", "containers"]));
            // Deployments print the raw selector string ("" when empty).
            let sel = selector_string(get(spec, &["selector"])).unwrap_or_else(|()| "<invalid>".to_string());
            vec![
                json!(name),
                json!(format!("{ready}/{desired}")),
                json!(int_at(status, &["updatedReplicas"])),
                json!(int_at(status, &["availableReplicas"])),
                json!(age),
                json!(n),
                json!(i),
                json!(sel),
            ]
        }
        "HorizontalPodAutoscaler" => {
            let reference = format!(
                "{}/{}",
                st(spec, &["scaleTargetRef", "kind"]),
                st(spec, &["scaleTargetRef", "name"])
            );
            let min = match int(get(spec, &["minReplicas"])) {
                Some(m) => m.to_string(),
                None => "<unset>".to_string(),
            };
            vec![
                json!(name),
                json!(reference),
                json!(hpa_targets(obj)),
                json!(min),
                json!(int_at(spec, &["maxReplicas"])),
                json!(int_at(status, &["currentReplicas"])),
                json!(age),
            ]
        }
        "NetworkPolicy" => {
            // podSelector is a required non-pointer struct: missing means empty.
            let sel = match get(spec, &["podSelector"]) {
                Value::Null => format_label_selector(&json!({})),
                v => format_label_selector(v),
            };
            vec![json!(name), json!(sel), json!(age)]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role = format!("{}/{}", st(obj, &["roleRef", "kind"]), st(obj, &["roleRef", "name"]));
            let (mut users, mut groups, mut sas) = (Vec::new(), Vec::new(), Vec::new());
            for s in arr(obj, &["subjects"]) {
                match st(s, &["kind"]) {
                    "ServiceAccount" => sas.push(format!("{}/{}", st(s, &["namespace"]), st(s, &["name"]))),
                    "User" => users.push(st(s, &["name"]).to_string()),
                    "Group" => groups.push(st(s, &["name"]).to_string()),
                    _ => {}
                }
            }
            vec![
                json!(name),
                json!(role),
                json!(age),
                json!(users.join(", ")),
                json!(groups.join(", ")),
                json!(sas.join(", ")),
            ]
        }
        "CertificateSigningRequest" => {
            let signer = none_if_empty(st(spec, &["signerName"]).to_string());
            let requested = match int(get(spec, &["expirationSeconds"])) {
                Some(s) => human_duration(s),
                None => "<none>".to_string(),
            };
            vec![
                json!(name),
                json!(age),
                json!(signer),
                json!(st(spec, &["username"])),
                json!(requested),
                json!(csr_condition(status)),
            ]
        }
        "Lease" => vec![json!(name), json!(st(spec, &["holderIdentity"])), json!(age)],
        "ControllerRevision" => {
            let owner = arr(obj, &["metadata", "ownerReferences"])
                .iter()
                .find(|o| get(o, &["controller"]).as_bool() == Some(true));
            let controller = match owner {
                Some(o) => group_kind_name(st(o, &["apiVersion"]), st(o, &["kind"]), st(o, &["name"])),
                None => "<none>".to_string(),
            };
            vec![json!(name), json!(controller), json!(int_at(obj, &["revision"])), json!(age)]
        }
        "ResourceQuota" => {
            let (req, lim) = quota_columns(status);
            vec![json!(name), json!(req), json!(lim), json!(age)]
        }
        "PriorityClass" => vec![
            json!(name),
            json!(int_at(obj, &["value"])),
            json!(bool_at(obj, &["globalDefault"])),
            json!(age),
            json!(st(obj, &["preemptionPolicy"])),
        ],
        "RuntimeClass" => vec![json!(name), json!(st(obj, &["handler"])), json!(age)],
        "VolumeAttachment" => vec![
            json!(name),
            json!(st(spec, &["attacher"])),
            json!(st(spec, &["source", "persistentVolumeName"])),
            json!(st(spec, &["nodeName"])),
            json!(bool_at(status, &["attached"])),
            json!(age),
        ],
        "CSINode" => vec![json!(name), json!(arr(spec, &["drivers"]).len()), json!(age)],
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => {
            vec![json!(name), json!(arr(obj, &["webhooks"]).len()), json!(age)]
        }
        "ServiceCIDR" => {
            let cidrs: Vec<&str> = arr(spec, &["cidrs"]).iter().map(|c| c.as_str().unwrap_or("")).collect();
            vec![json!(name), json!(cidrs.join(",")), json!(age)]
        }
        "Role" | "ClusterRole" | "LimitRange" | "CustomResourceDefinition" => {
            // Generic convertor: RFC3339 in UTC; an unset time prints Go's zero time.
            let created = ts_at(obj, &["metadata", "creationTimestamp"]).unwrap_or(GO_ZERO_UNIX * NS);
            vec![json!(name), json!(format_rfc3339_utc(created))]
        }
        _ => vec![json!(name), json!(age)],
    }
}

fn pod_cells(pod: &Value, now_unix: i64) -> Vec<Value> {
    let spec = get(pod, &["spec"]);
    let status = get(pod, &["status"]);
    let init_specs = arr(spec, &["initContainers"]);
    let conditions = arr(status, &["conditions"]);

    // Sidecars are init containers with restartPolicy Always; the last spec
    // entry with a given name wins, as in the upstream name map.
    let restartable = |name: &str| {
        init_specs
            .iter()
            .rev()
            .find(|c| st(c, &["name"]) == name)
            .is_some_and(|c| st(c, &["restartPolicy"]) == "Always")
    };

    let mut total = arr(spec, &["containers"]).len();
    total += init_specs.iter().filter(|c| st(c, &["restartPolicy"]) == "Always").count();
    let mut ready = 0usize;
    let mut restarts: i64 = 0;
    let mut sidecar_restarts: i64 = 0;
    // None stands for Go's zero time, which sorts before every real time.
    let mut last_restart: Option<i128> = None;
    let mut last_sidecar_restart: Option<i128> = None;

    let phase = st(status, &["phase"]);
    let status_reason = st(status, &["reason"]);
    let mut reason = if status_reason.is_empty() { phase.to_string() } else { status_reason.to_string() };
    if conditions
        .iter()
        .any(|c| st(c, &["type"]) == "PodScheduled" && st(c, &["reason"]) == "SchedulingGated")
    {
        reason = "SchedulingGated".to_string();
    }

    let mut initializing = false;
    for (i, cs) in arr(status, &["initContainerStatuses"]).iter().enumerate() {
        let rc = int_at(cs, &["restartCount"]);
        restarts = restarts.saturating_add(rc);
        let finished = if is_obj(cs, &["lastState", "terminated"]) {
            ts_at(cs, &["lastState", "terminated", "finishedAt"])
        } else {
            None
        };
        last_restart = last_restart.max(finished);
        let sidecar = restartable(st(cs, &["name"]));
        if sidecar {
            sidecar_restarts = sidecar_restarts.saturating_add(rc);
            last_sidecar_restart = last_sidecar_restart.max(finished);
        }
        let term = get(cs, &["state", "terminated"]);
        let waiting_reason = st(cs, &["state", "waiting", "reason"]);
        if term.is_object() && int_at(term, &["exitCode"]) == 0 {
            continue;
        }
        if sidecar && get(cs, &["started"]).as_bool() == Some(true) {
            if bool_at(cs, &["ready"]) {
                ready += 1;
            }
            continue;
        }
        reason = if term.is_object() {
            let r = st(term, &["reason"]);
            if !r.is_empty() {
                format!("Init:{r}")
            } else if int_at(term, &["signal"]) != 0 {
                format!("Init:Signal:{}", int_at(term, &["signal"]))
            } else {
                format!("Init:ExitCode:{}", int_at(term, &["exitCode"]))
            }
        } else if is_obj(cs, &["state", "waiting"]) && !waiting_reason.is_empty() && waiting_reason != "PodInitializing"
        {
            format!("Init:{waiting_reason}")
        } else {
            format!("Init:{}/{}", i, init_specs.len())
        };
        initializing = true;
        break;
    }

    let initialized = conditions
        .iter()
        .find(|c| st(c, &["type"]) == "Initialized")
        .is_some_and(|c| st(c, &["status"]) == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        // Reverse order so the first container's state ends up in the reason.
        for cs in arr(status, &["containerStatuses"]).iter().rev() {
            restarts = restarts.saturating_add(int_at(cs, &["restartCount"]));
            if is_obj(cs, &["lastState", "terminated"]) {
                last_restart = last_restart.max(ts_at(cs, &["lastState", "terminated", "finishedAt"]));
            }
            let term = get(cs, &["state", "terminated"]);
            let waiting_reason = st(cs, &["state", "waiting", "reason"]);
            if is_obj(cs, &["state", "waiting"]) && !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if term.is_object() && !st(term, &["reason"]).is_empty() {
                reason = st(term, &["reason"]).to_string();
            } else if term.is_object() {
                reason = if int_at(term, &["signal"]) != 0 {
                    format!("Signal:{}", int_at(term, &["signal"]))
                } else {
                    format!("ExitCode:{}", int_at(term, &["exitCode"]))
                };
            } else if bool_at(cs, &["ready"]) && is_obj(cs, &["state", "running"]) {
                has_running = true;
                ready += 1;
            }
        }
        // A finished container next to a running one means the pod still runs.
        if reason == "Completed" && has_running {
            let pod_ready = conditions
                .iter()
                .any(|c| st(c, &["type"]) == "Ready" && st(c, &["status"]) == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }

    if deleting(pod) && status_reason == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting(pod) && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts_s = match last_restart {
        Some(t) if restarts != 0 => format!("{} ({} ago)", restarts, since(Some(t), now_unix)),
        _ => restarts.to_string(),
    };

    // v1 podIP is authoritative over podIPs when both are set.
    let mut ip = st(status, &["podIP"]);
    if ip.is_empty() {
        ip = arr(status, &["podIPs"]).first().map(|p| st(p, &["ip"])).unwrap_or("");
    }
    let gates = arr(spec, &["readinessGates"]);
    let gates_s = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let ok = gates
            .iter()
            .filter(|g| {
                let ty = st(g, &["conditionType"]);
                conditions
                    .iter()
                    .find(|c| st(c, &["type"]) == ty)
                    .is_some_and(|c| st(c, &["status"]) == "True")
            })
            .count();
        format!("{}/{}", ok, gates.len())
    };

    vec![
        json!(meta_name(pod)),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_s),
        json!(age_of(pod, now_unix)),
        json!(none_if_empty(ip.to_string())),
        json!(none_if_empty(st(spec, &["nodeName"]).to_string())),
        json!(none_if_empty(st(status, &["nominatedNodeName"]).to_string())),
        json!(gates_s),
    ]
}

/// Row conditions upstream attaches to finished pods.
fn pod_row_conditions(pod: &Value) -> Option<Value> {
    let (reason, message) = match st(pod, &["status", "phase"]) {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

fn job_cells(obj: &Value, name: &str, age: &str, now_unix: i64) -> Vec<Value> {
    let spec = get(obj, &["spec"]);
    let status = get(obj, &["status"]);
    let succeeded = int_at(status, &["succeeded"]);
    let completions = match int(get(spec, &["completions"])) {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let par = int_at(spec, &["parallelism"]);
            if par > 1 { format!("{succeeded}/1 of {par}") } else { format!("{succeeded}/1") }
        }
    };
    let duration = match (ts_at(status, &["startTime"]), ts_at(status, &["completionTime"])) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration_nanos(i128::from(now_unix) * NS - start),
        (Some(start), Some(end)) => human_duration_nanos(end - start),
    };
    // First condition of a type decides, as hasJobCondition does.
    let has = |ty: &str| {
        arr(status, &["conditions"])
            .iter()
            .find(|c| st(c, &["type"]) == ty)
            .is_some_and(|c| st(c, &["status"]) == "True")
    };
    let state = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if deleting(obj) {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (n, i) = layout_containers(arr(spec, &["template", "spec", "containers"]));
    vec![
        json!(name),
        json!(state),
        json!(completions),
        json!(duration),
        json!(age),
        json!(n),
        json!(i),
        json!(format_label_selector(get(spec, &["selector"]))),
    ]
}

/// Sorted, de-duplicated load-balancer ingress IPs/hostnames. The server always
/// renders wide output, so no truncation.
fn lb_ingress(ingress: &[Value]) -> String {
    let set: BTreeSet<&str> = ingress
        .iter()
        .filter_map(|i| {
            let ip = st(i, &["ip"]);
            let host = st(i, &["hostname"]);
            if !ip.is_empty() {
                Some(ip)
            } else if !host.is_empty() {
                Some(host)
            } else {
                None
            }
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

fn service_cells(obj: &Value, name: &str, age: &str) -> Vec<Value> {
    let spec = get(obj, &["spec"]);
    // Defaulting fills type=ClusterIP and protocol=TCP.
    let ty = get(spec, &["type"]).as_str().unwrap_or("ClusterIP");
    let mut cluster_ip = st(spec, &["clusterIP"]);
    if cluster_ip.is_empty() {
        cluster_ip = arr(spec, &["clusterIPs"]).first().and_then(|v| v.as_str()).unwrap_or("");
    }
    let external_ips: Vec<&str> = arr(spec, &["externalIPs"]).iter().map(|v| v.as_str().unwrap_or("")).collect();
    let external = match ty {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() { "<none>".to_string() } else { external_ips.join(",") }
        }
        "LoadBalancer" => {
            let lb = lb_ingress(arr(obj, &["status", "loadBalancer", "ingress"]));
            if !external_ips.is_empty() {
                let mut all: Vec<&str> = Vec::new();
                if !lb.is_empty() {
                    all.extend(lb.split(','));
                }
                all.extend(external_ips.iter().copied());
                all.join(",")
            } else if !lb.is_empty() {
                lb
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => st(spec, &["externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = arr(spec, &["ports"])
        .iter()
        .map(|p| {
            let port = int_at(p, &["port"]);
            let proto = get(p, &["protocol"]).as_str().unwrap_or("TCP");
            let node_port = int_at(p, &["nodePort"]);
            if node_port > 0 { format!("{port}:{node_port}/{proto}") } else { format!("{port}/{proto}") }
        })
        .collect();
    vec![
        json!(name),
        json!(ty),
        json!(none_if_empty(cluster_ip.to_string())),
        json!(external),
        json!(none_if_empty(ports.join(","))),
        json!(age),
        json!(format_labels(get(spec, &["selector"]))),
    ]
}

fn format_ingress_hosts(rules: &[Value]) -> String {
    let max = 3;
    let mut list: Vec<&str> = Vec::new();
    let mut more = false;
    for r in rules {
        if list.len() == max {
            more = true;
        }
        let host = st(r, &["host"]);
        if !more && !host.is_empty() {
            list.push(host);
        }
    }
    if list.is_empty() {
        return "*".to_string();
    }
    let ret = list.join(",");
    if more { format!("{} + {} more...", ret, rules.len().saturating_sub(max)) } else { ret }
}

fn format_endpoints(obj: &Value) -> String {
    let subsets = arr(obj, &["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let max = 3;
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count = 0usize;
    for ss in subsets {
        let addrs = arr(ss, &["addresses"]);
        let ports = arr(ss, &["ports"]);
        if ports.is_empty() {
            // Headless services may have no ports at all.
            count += addrs.len();
            for a in addrs {
                if list.len() == max {
                    more = true;
                    break;
                }
                list.push(st(a, &["ip"]).to_string());
            }
            continue;
        }
        for p in ports {
            count += addrs.len();
            for a in addrs {
                if list.len() == max {
                    more = true;
                    break;
                }
                list.push(join_host_port(st(a, &["ip"]), int_at(p, &["port"])));
            }
        }
    }
    let ret = list.join(",");
    if more { format!("{} + {} more...", ret, count.saturating_sub(max)) } else { ret }
}

fn node_cells(obj: &Value, name: &str, age: &str) -> Vec<Value> {
    let status = get(obj, &["status"]);
    // The last Ready condition wins, as with the upstream condition map.
    let ready = arr(status, &["conditions"]).iter().rev().find(|c| st(c, &["type"]) == "Ready");
    let mut states = vec![match ready {
        Some(c) if st(c, &["status"]) == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if bool_at(obj, &["spec", "unschedulable"]) {
        states.push("SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    if let Some(labels) = get(obj, &["metadata", "labels"]).as_object() {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                let v = v.as_str().unwrap_or("");
                if !v.is_empty() {
                    roles.insert(v.to_string());
                }
            }
        }
    }
    let addr = |ty: &str| {
        arr(status, &["addresses"])
            .iter()
            .find(|a| st(a, &["type"]) == ty)
            .map(|a| st(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".to_string())
    };
    let info = |k: &str| {
        let v = st(status, &["nodeInfo", k]);
        if v.is_empty() { "<unknown>".to_string() } else { v.to_string() }
    };
    vec![
        json!(name),
        json!(states.join(",")),
        json!(none_if_empty(roles.into_iter().collect::<Vec<_>>().join(","))),
        json!(age),
        json!(st(status, &["nodeInfo", "kubeletVersion"])),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

fn event_cells(ev: &Value, name: &str, now_unix: i64) -> Vec<Value> {
    // Accept both core/v1 and events.k8s.io/v1 field names.
    let first_ts = pick(ev, &[&["firstTimestamp"], &["deprecatedFirstTimestamp"]]);
    let last_ts = pick(ev, &[&["lastTimestamp"], &["deprecatedLastTimestamp"]]);
    let ts = |v: &Value| v.as_str().and_then(parse_rfc3339).filter(|t| *t != GO_ZERO_UNIX * NS);

    let first_seen = match ts(first_ts) {
        Some(t) => since(Some(t), now_unix),
        None => since(ts_at(ev, &["eventTime"]), now_unix),
    };
    let mut last_seen = match ts(last_ts) {
        Some(t) => since(Some(t), now_unix),
        None => first_seen.clone(),
    };
    let mut count = int(pick(ev, &[&["count"], &["deprecatedCount"]])).unwrap_or(0);
    let series = get(ev, &["series"]);
    if series.is_object() {
        last_seen = since(ts_at(series, &["lastObservedTime"]), now_unix);
        count = int_at(series, &["count"]);
    } else if count == 0 {
        // Singleton events from the new API carry no count.
        count = 1;
    }
    let involved = pick(ev, &[&["involvedObject"], &["regarding"]]);
    let kind = st(involved, &["kind"]).to_lowercase();
    let obj_name = st(involved, &["name"]);
    let target = if obj_name.is_empty() { kind } else { format!("{kind}/{obj_name}") };

    let source = pick(ev, &[&["source"], &["deprecatedSource"]]);
    let first_non_empty = |a: &'_ str, b: &'_ str| if a.is_empty() { b.to_string() } else { a.to_string() };
    let component = first_non_empty(
        st(source, &["component"]),
        pick(ev, &[&["reportingComponent"], &["reportingController"]]).as_str().unwrap_or(""),
    );
    let instance = first_non_empty(st(source, &["host"]), st(ev, &["reportingInstance"]));
    let source_s = if instance.is_empty() { component } else { format!("{component}, {instance}") };
    let message = pick(ev, &[&["message"], &["note"]]).as_str().unwrap_or("").trim();

    vec![
        json!(last_seen),
        json!(st(ev, &["type"])),
        json!(st(ev, &["reason"])),
        json!(target),
        json!(st(involved, &["fieldPath"])),
        json!(source_s),
        json!(message),
        json!(first_seen),
        json!(count),
        json!(name),
    ]
}

fn csr_condition(status: &Value) -> String {
    let conds = arr(status, &["conditions"]);
    let has = |t: &str| conds.iter().any(|c| st(c, &["type"]) == t);
    let mut s = if has("Denied") {
        "Denied"
    } else if has("Approved") {
        "Approved"
    } else {
        "Pending"
    }
    .to_string();
    if has("Failed") {
        s.push_str(",Failed");
    }
    if !st(status, &["certificate"]).is_empty() {
        s.push_str(",Issued");
    }
    s
}

/// Request/Limit columns: "res: used/hard" sorted by resource name, "limits.*"
/// going to the Limit column.
fn quota_columns(status: &Value) -> (String, String) {
    let Some(hard) = get(status, &["hard"]).as_object() else {
        return (String::new(), String::new());
    };
    let mut keys: Vec<&String> = hard.keys().collect();
    keys.sort();
    let (mut req, mut lim) = (Vec::new(), Vec::new());
    for k in keys {
        let used = qty(get(status, &["used", k.as_str()]));
        let h = qty(hard.get(k.as_str()).unwrap_or(&NULL));
        let entry = format!("{k}: {used}/{h}");
        let pieces: Vec<&str> = k.split('.').collect();
        if pieces.len() > 1 && pieces[0] == "limits" {
            lim.push(entry);
        } else {
            req.push(entry);
        }
    }
    (req.join(", "), lim.join(", "))
}

fn hpa_targets(obj: &Value) -> String {
    let spec = get(obj, &["spec"]);
    let status = get(obj, &["status"]);
    let mut specs: Vec<Value> = arr(spec, &["metrics"]).to_vec();
    let mut statuses: Vec<Value> = arr(status, &["currentMetrics"]).to_vec();
    // autoscaling/v1 objects carry only CPU percentages; map them to v2 shape.
    let v1_target = if specs.is_empty() { int(get(spec, &["targetCPUUtilizationPercentage"])) } else { None };
    if let Some(t) = v1_target {
        specs = vec![json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": t}}})];
        if let Some(cur) = int(get(status, &["currentCPUUtilizationPercentage"])) {
            statuses = vec![json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": cur}}})];
        }
    }
    if specs.is_empty() {
        return "<none>".to_string();
    }
    let unknown = || "<unknown>".to_string();
    let mut list: Vec<String> = Vec::new();
    for (i, m) in specs.iter().enumerate() {
        let cur = statuses.get(i).unwrap_or(&NULL);
        let entry = match st(m, &["type"]) {
            ty @ ("External" | "Object") => {
                let field = if ty == "External" { "external" } else { "object" };
                let target = get(m, &[field, "target"]);
                let cs = get(cur, &[field]);
                if present(target, &["averageValue"]) {
                    let c = if present(cs, &["current", "averageValue"]) {
                        qty_ptr(get(cs, &["current", "averageValue"]))
                    } else {
                        unknown()
                    };
                    format!("{}/{} (avg)", c, qty_ptr(get(target, &["averageValue"])))
                } else {
                    let c = if cs.is_null() { unknown() } else { qty_ptr(get(cs, &["current", "value"])) };
                    format!("{}/{}", c, qty_ptr(get(target, &["value"])))
                }
            }
            "Pods" => {
                let cs = get(cur, &["pods"]);
                let c = if cs.is_null() { unknown() } else { qty_ptr(get(cs, &["current", "averageValue"])) };
                format!("{}/{}", c, qty_ptr(get(m, &["pods", "target", "averageValue"])))
            }
            ty @ ("Resource" | "ContainerResource") => {
                let field = if ty == "Resource" { "resource" } else { "containerResource" };
                let rname = st(m, &[field, "name"]);
                let target = get(m, &[field, "target"]);
                let cs = get(cur, &[field]);
                if present(target, &["averageValue"]) {
                    let c = if cs.is_null() { unknown() } else { qty_ptr(get(cs, &["current", "averageValue"])) };
                    format!("{}: {}/{}", rname, c, qty_ptr(get(target, &["averageValue"])))
                } else {
                    let c = match int(get(cs, &["current", "averageUtilization"])) {
                        Some(u) => format!("{u}%"),
                        None => unknown(),
                    };
                    let t = match int(get(target, &["averageUtilization"])) {
                        Some(u) => format!("{u}%"),
                        None => "<auto>".to_string(),
                    };
                    format!("{rname}: {c}/{t}")
                }
            }
            _ => "<unknown type>".to_string(),
        };
        list.push(entry);
    }
    let max = 2;
    let count = list.len();
    if count > max {
        list.truncate(max);
        return format!("{} + {} more...", list.join(", "), count - max);
    }
    list.join(", ")
}

// ---------------------------------------------------------------------------
// Table assembly
// ---------------------------------------------------------------------------

/// The complete meta.k8s.io/v1 Table JSON for `objs` of kind `kind`.
#[allow(clippy::too_many_arguments)]
pub fn table(
    kind: &str,
    objs: &[Value],
    rv: &str,
    cont: Option<&str>,
    remaining: Option<i64>,
    include_object: &str,
    with_headers: bool,
    now_unix: i64,
) -> Value {
    let mut metadata = Map::new();
    // ListMeta fields are omitempty upstream.
    if !rv.is_empty() {
        metadata.insert("resourceVersion".into(), json!(rv));
    }
    if let Some(c) = cont.filter(|c| !c.is_empty()) {
        metadata.insert("continue".into(), json!(c));
    }
    if let Some(r) = remaining {
        metadata.insert("remainingItemCount".into(), json!(r));
    }
    let column_defs: Vec<Value> = if with_headers {
        columns(kind)
            .into_iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.type_,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells(kind, o, now_unix)));
            let conditions = if kind == "Pod" { pod_row_conditions(o) } else { None };
            if let Some(conds) = conditions {
                row.insert("conditions".into(), conds);
            }
            match include_object {
                "Object" => {
                    row.insert("object".into(), o.clone());
                }
                "None" => {}
                _ => {
                    let meta = match get(o, &["metadata"]) {
                        Value::Null => json!({}),
                        m => m.clone(),
                    };
                    row.insert(
                        "object".into(),
                        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}),
                    );
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": Value::Object(metadata),
        "columnDefinitions": column_defs,
        "rows": rows,
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    /// RFC3339 timestamp `secs_ago` seconds before NOW.
    fn ago(secs_ago: i64) -> String {
        format_rfc3339_utc(i128::from(NOW - secs_ago) * NS)
    }

    fn cell_strs(kind: &str, obj: &Value) -> Vec<String> {
        cells(kind, obj, NOW)
            .into_iter()
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect()
    }

    fn col_names(kind: &str) -> Vec<&'static str> {
        columns(kind).into_iter().map(|c| c.name).collect()
    }

    fn pod(status: Value) -> Value {
        json!({
            "metadata": {"name": "p", "creationTimestamp": ago(300)},
            "spec": {"containers": [{"name": "a", "image": "nginx"}]},
            "status": status,
        })
    }

    const ALL_KINDS: &[&str] = &[
        "Pod", "PodTemplate", "PodDisruptionBudget", "ReplicationController", "ReplicaSet", "DaemonSet", "Job",
        "CronJob", "Service", "Ingress", "IngressClass", "StatefulSet", "Endpoints", "EndpointSlice", "Node",
        "Event", "Namespace", "Secret", "ServiceAccount", "ConfigMap", "PersistentVolume",
        "PersistentVolumeClaim", "StorageClass", "ComponentStatus", "Deployment", "HorizontalPodAutoscaler",
        "NetworkPolicy", "RoleBinding", "ClusterRoleBinding", "CertificateSigningRequest", "Lease",
        "ControllerRevision", "ResourceQuota", "PriorityClass", "RuntimeClass", "VolumeAttachment", "CSINode",
        "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ServiceCIDR", "Role", "ClusterRole",
        "LimitRange", "CustomResourceDefinition", "Widget",
    ];

    // ---- durations -------------------------------------------------------

    #[test]
    fn human_duration_matches_upstream_examples() {
        let h = 3600;
        let cases = [
            (1, "1s"),
            (70, "70s"),
            (190, "3m10s"),
            (70 * 60, "70m"),
            (47 * h, "47h"),
            (49 * h, "2d1h"),
            ((8 * 24 + 2) * h, "8d"),
            (367 * 24 * h, "367d"),
            ((365 * 2 * 24 + 25) * h, "2y1d"),
            ((365 * 8 * 24 + 2) * h, "8y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn human_duration_boundaries_match_upstream() {
        let (m, h, d, y) = (60, 3600, 86_400, 365 * 86_400);
        let cases = [
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (2 * m - 1, "119s"),
            (2 * m, "2m"),
            (2 * m + 1, "2m1s"),
            (10 * m - 1, "9m59s"),
            (10 * m, "10m"),
            (10 * m + 1, "10m"),
            (3 * h - 1, "179m"),
            (3 * h, "3h"),
            (3 * h + m, "3h1m"),
            (8 * h - 1, "7h59m"),
            (8 * h, "8h"),
            (8 * h + 59 * m, "8h"),
            (2 * d - 1, "47h"),
            (2 * d, "2d"),
            (2 * d + h, "2d1h"),
            (8 * d - 1, "7d23h"),
            (8 * d, "8d"),
            (8 * d + 23 * h, "8d"),
            (2 * y - 1, "729d"),
            (2 * y, "2y"),
            (2 * y + 23 * h + 59 * m, "2y"),
            (2 * y + d, "2y1d"),
            (3 * y, "3y"),
            (8 * y - 1, "7y364d"),
            (8 * y, "8y"),
            (8 * y + 364 * d, "8y"),
            (9 * y, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}s");
        }
    }

    #[test]
    fn sub_second_skew_within_tolerance_prints_zero() {
        // 1.5s in the future truncates to -1s, which upstream still shows as 0s.
        assert_eq!(human_duration_nanos(-1_500_000_000), "0s");
        assert_eq!(human_duration_nanos(-2_000_000_000), "<invalid>");
    }

    #[test]
    fn age_parses_zulu_fractional_and_offset_timestamps() {
        assert_eq!(age(Some("2023-11-14T22:08:20Z"), NOW), "5m");
        assert_eq!(age(Some("2023-11-14T22:08:20.999999Z"), NOW), "4m59s");
        assert_eq!(age(Some("2023-11-14T23:08:20+01:00"), NOW), "5m");
        assert_eq!(age(Some("2023-11-14T17:08:20-05:00"), NOW), "5m");
        assert_eq!(age(Some("2023-11-14t22:13:10z"), NOW), "10s");
    }

    #[test]
    fn age_of_missing_or_bad_timestamp_is_unknown() {
        assert_eq!(age(None, NOW), "<unknown>");
        assert_eq!(age(Some("yesterday"), NOW), "<unknown>");
        assert_eq!(age(Some("2023-02-30T00:00:00Z"), NOW), "<unknown>");
        assert_eq!(age(Some("2023-11-14T22:13:20"), NOW), "<unknown>");
        assert_eq!(age(Some("0001-01-01T00:00:00Z"), NOW), "<unknown>");
        assert_eq!(age(Some("ünïcödé-ünïcödé-ünïcödé"), NOW), "<unknown>");
    }

    #[test]
    fn age_in_the_future_is_invalid() {
        assert_eq!(age(Some("2023-11-14T22:13:30Z"), NOW), "<invalid>");
        assert_eq!(age(Some("2023-11-14T22:13:21Z"), NOW), "0s");
    }

    #[test]
    fn rfc3339_round_trips_through_civil_conversion() {
        for s in ["1970-01-01T00:00:00Z", "2000-02-29T12:34:56Z", "2024-12-31T23:59:59Z", "1969-07-20T20:17:00Z"] {
            let t = parse_rfc3339(s).expect("valid timestamp");
            assert_eq!(format_rfc3339_utc(t), s);
        }
    }

    // ---- pods --------------------------------------------------------------

    #[test]
    fn pod_columns_match_upstream_names_and_priorities() {
        let cols = columns("Pod");
        assert_eq!(
            cols.iter().map(|c| c.name).collect::<Vec<_>>(),
            ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]
        );
        assert_eq!(cols[0].format, "name");
        assert_eq!(cols[3].type_, "string");
        assert!(cols[..5].iter().all(|c| c.priority == 0));
        assert!(cols[5..].iter().all(|c| c.priority == 1));
    }

    #[test]
    fn pod_running_and_ready() {
        let p = pod(json!({
            "phase": "Running", "podIP": "10.1.2.3",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}],
        }));
        assert_eq!(cell_strs("Pod", &p), ["p", "1/1", "Running", "0", "5m", "10.1.2.3", "<none>", "<none>", "<none>"]);
    }

    #[test]
    fn pod_ready_count_counts_only_ready_running_containers() {
        let mut p = pod(json!({
            "phase": "Running",
            "containerStatuses": [
                {"name": "a", "ready": true, "state": {"running": {}}},
                {"name": "b", "ready": false, "state": {"running": {}}},
            ],
        }));
        p["spec"]["containers"] = json!([{"name": "a"}, {"name": "b"}, {"name": "c"}]);
        assert_eq!(cell_strs("Pod", &p)[1], "1/3");
    }

    #[test]
    fn pod_pending_container_creating() {
        let p = pod(json!({
            "phase": "Pending",
            "containerStatuses": [{"name": "a", "ready": false, "state": {"waiting": {"reason": "ContainerCreating"}}}],
        }));
        let c = cell_strs("Pod", &p);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "ContainerCreating");
    }

    #[test]
    fn pod_pending_without_statuses_shows_phase() {
        assert_eq!(cell_strs("Pod", &pod(json!({"phase": "Pending"})))[2], "Pending");
    }

    #[test]
    fn pod_terminating_when_deletion_timestamp_set() {
        let mut p = pod(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "a", "ready": true, "state": {"running": {}}}],
        }));
        p["metadata"]["deletionTimestamp"] = json!(ago(1));
        assert_eq!(cell_strs("Pod", &p)[2], "Terminating");
    }

    #[test]
    fn pod_deleted_after_completion_keeps_terminal_reason() {
        let mut p = pod(json!({
            "phase": "Succeeded",
            "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
        }));
        p["metadata"]["deletionTimestamp"] = json!(ago(1));
        assert_eq!(cell_strs("Pod", &p)[2], "Completed");
    }

    #[test]
    fn pod_on_lost_node_being_deleted_is_unknown() {
        let mut p = pod(json!({"phase": "Running", "reason": "NodeLost"}));
        p["metadata"]["deletionTimestamp"] = json!(ago(1));
        assert_eq!(cell_strs("Pod", &p)[2], "Unknown");
    }

    #[test]
    fn pod_status_reason_overrides_phase() {
        assert_eq!(cell_strs("Pod", &pod(json!({"phase": "Failed", "reason": "Evicted"})))[2], "Evicted");
    }

    #[test]
    fn pod_scheduling_gated() {
        let p = pod(json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}],
        }));
        assert_eq!(cell_strs("Pod", &p)[2], "SchedulingGated");
    }

    #[test]
    fn pod_crash_loop_back_off_with_restarts_ago() {
        let p = pod(json!({
            "phase": "Running",
            "containerStatuses": [{
                "name": "a", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(65)}},
            }],
        }));
        let c = cell_strs("Pod", &p);
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "4 (65s ago)");
    }

    #[test]
    fn pod_restarts_use_latest_finish_time_across_containers() {
        let mut p = pod(json!({
            "phase": "Running",
            "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(7200)}}},
                {"name": "b", "ready": true, "restartCount": 2, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(600)}}},
            ],
        }));
        p["spec"]["containers"] = json!([{"name": "a"}, {"name": "b"}]);
        assert_eq!(cell_strs("Pod", &p)[3], "3 (10m ago)");
    }

    #[test]
    fn pod_restarts_without_last_termination_are_plain_number() {
        let p = pod(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}}],
        }));
        assert_eq!(cell_strs("Pod", &p)[3], "2");
    }

    #[test]
    fn pod_completed() {
        let p = pod(json!({
            "phase": "Succeeded",
            "containerStatuses": [{"name": "a", "ready": false, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
        }));
        let c = cell_strs("Pod", &p);
        assert_eq!(c[1], "0/1");
        assert_eq!(c[2], "Completed");
    }

    #[test]
    fn pod_terminated_without_reason_shows_signal_or_exit_code() {
        let sig = pod(json!({"phase": "Failed", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 137, "signal": 9}}}]}));
        assert_eq!(cell_strs("Pod", &sig)[2], "Signal:9");
        let code = pod(json!({"phase": "Failed", "containerStatuses": [{"name": "a", "state": {"terminated": {"exitCode": 3}}}]}));
        assert_eq!(cell_strs("Pod", &code)[2], "ExitCode:3");
    }

    #[test]
    fn pod_completed_container_next_to_running_one_is_running_or_not_ready() {
        let mut p = pod(json!({
            "phase": "Running",
            "containerStatuses": [
                {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "b", "ready": true, "state": {"running": {}}},
            ],
        }));
        p["spec"]["containers"] = json!([{"name": "a"}, {"name": "b"}]);
        assert_eq!(cell_strs("Pod", &p)[2], "NotReady");
        p["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        assert_eq!(cell_strs("Pod", &p)[2], "Running");
    }

    #[test]
    fn pod_init_waiting_shows_init_progress() {
        let mut p = pod(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "init", "state": {"waiting": {"reason": "PodInitializing"}}}],
            "containerStatuses": [{"name": "a", "state": {"waiting": {"reason": "PodInitializing"}}}],
        }));
        p["spec"]["initContainers"] = json!([{"name": "init"}]);
        let c = cell_strs("Pod", &p);
        assert_eq!(c[2], "Init:0/1");
        assert_eq!(c[1], "0/1");
    }

    #[test]
    fn pod_init_progress_skips_finished_init_containers() {
        let mut p = pod(json!({
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": "i1", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "i2", "state": {"running": {}}},
            ],
        }));
        p["spec"]["initContainers"] = json!([{"name": "i1"}, {"name": "i2"}]);
        assert_eq!(cell_strs("Pod", &p)[2], "Init:1/2");
    }

    #[test]
    fn pod_init_crash_loop_counts_init_restarts() {
        let mut p = pod(json!({
            "phase": "Pending",
            "initContainerStatuses": [{
                "name": "init", "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(30)}},
            }],
            "containerStatuses": [{"name": "a", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}],
        }));
        p["spec"]["initContainers"] = json!([{"name": "init"}]);
        let c = cell_strs("Pod", &p);
        assert_eq!(c[2], "Init:CrashLoopBackOff");
        assert_eq!(c[3], "3 (30s ago)");
    }

    #[test]
    fn pod_init_failure_without_reason_shows_exit_code() {
        let mut p = pod(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "init", "state": {"terminated": {"exitCode": 2}}}],
        }));
        p["spec"]["initContainers"] = json!([{"name": "init"}]);
        assert_eq!(cell_strs("Pod", &p)[2], "Init:ExitCode:2");
    }

    #[test]
    fn pod_sidecar_init_container_counts_toward_ready_and_total() {
        let mut p = pod(json!({
            "phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
            "initContainerStatuses": [{"name": "side", "ready": true, "started": true, "restartCount": 1, "state": {"running": {}}}],
            "containerStatuses": [{"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}}],
        }));
        p["spec"]["initContainers"] = json!([{"name": "side", "restartPolicy": "Always"}]);
        let c = cell_strs("Pod", &p);
        assert_eq!(c[1], "2/2");
        assert_eq!(c[2], "Running");
        assert_eq!(c[3], "3");
    }

    #[test]
    fn pod_wide_cells_show_ip_node_nominated_and_gates() {
        let mut p = pod(json!({
            "phase": "Running",
            "podIPs": [{"ip": "fd00::5"}],
            "nominatedNodeName": "n2",
            "conditions": [{"type": "example.com/gate", "status": "True"}, {"type": "other/gate", "status": "False"}],
        }));
        p["spec"]["nodeName"] = json!("n1");
        p["spec"]["readinessGates"] = json!([{"conditionType": "example.com/gate"}, {"conditionType": "other/gate"}]);
        let c = cell_strs("Pod", &p);
        assert_eq!(&c[5..], ["fd00::5", "n1", "n2", "1/2"]);
    }

    // ---- nodes ---------------------------------------------------------------

    #[test]
    fn node_ready_with_sorted_roles_and_version() {
        let n = json!({
            "metadata": {"name": "n1", "creationTimestamp": ago(3 * 86_400), "labels": {
                "node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "",
                "kubernetes.io/role": "infra", "node-role.kubernetes.io/": "x",
            }},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "containerd://2.0"},
                "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "n1"}],
            },
        });
        assert_eq!(
            cell_strs("Node", &n),
            ["n1", "Ready", "control-plane,infra,worker", "3d", "v1.33.0", "10.0.0.5", "<none>", "Debian", "6.1", "containerd://2.0"]
        );
    }

    #[test]
    fn node_not_ready_and_scheduling_disabled() {
        let n = json!({
            "metadata": {"name": "n"},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
        });
        let c = cell_strs("Node", &n);
        assert_eq!(c[1], "NotReady,SchedulingDisabled");
        assert_eq!(c[2], "<none>");
        assert_eq!(c[7], "<unknown>");
    }

    #[test]
    fn node_without_ready_condition_is_unknown() {
        let n = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}});
        assert_eq!(cell_strs("Node", &n)[1], "Unknown,SchedulingDisabled");
    }

    // ---- services & endpoints ----------------------------------------------

    #[test]
    fn service_cluster_ip_with_ports_and_selector() {
        let s = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(60)},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "selector": {"app": "web", "tier": "fe"},
                     "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]},
        });
        assert_eq!(cell_strs("Service", &s), ["web", "ClusterIP", "10.96.0.10", "<none>", "80/TCP,53/UDP", "60s", "app=web,tier=fe"]);
    }

    #[test]
    fn service_node_port_shows_allocated_port_and_defaults_protocol() {
        let s = json!({"metadata": {"name": "np"}, "spec": {"type": "NodePort", "clusterIPs": ["10.96.1.1"], "ports": [{"port": 80, "nodePort": 30080}]}});
        let c = cell_strs("Service", &s);
        assert_eq!(c[2], "10.96.1.1");
        assert_eq!(c[4], "80:30080/TCP");
    }

    #[test]
    fn headless_service_shows_none_cluster_ip_and_no_ports() {
        let s = json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}});
        let c = cell_strs("Service", &s);
        assert_eq!(c[1], "ClusterIP");
        assert_eq!(c[2], "None");
        assert_eq!(c[4], "<none>");
        assert_eq!(c[6], "<none>");
    }

    #[test]
    fn load_balancer_external_ip_pending_ingress_and_external_ips() {
        let mut s = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1"}});
        assert_eq!(cell_strs("Service", &s)[3], "<pending>");
        s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "lb.example.com"}, {"ip": "1.2.3.4"}]}});
        assert_eq!(cell_strs("Service", &s)[3], "1.2.3.4,5.6.7.8,lb.example.com");
        s["spec"]["externalIPs"] = json!(["9.9.9.9"]);
        assert_eq!(cell_strs("Service", &s)[3], "1.2.3.4,5.6.7.8,lb.example.com,9.9.9.9");
    }

    #[test]
    fn external_name_service_shows_target_name() {
        let s = json!({"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "db.example.com"}});
        let c = cell_strs("Service", &s);
        assert_eq!(c[2], "<none>");
        assert_eq!(c[3], "db.example.com");
    }

    #[test]
    fn endpoints_list_up_to_three_then_more() {
        let e = json!({"metadata": {"name": "e"}, "subsets": [
            {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]},
        ]});
        assert_eq!(cell_strs("Endpoints", &e)[1], "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...");
        let none = json!({"metadata": {"name": "e"}});
        assert_eq!(cell_strs("Endpoints", &none)[1], "<none>");
        let v6 = json!({"subsets": [{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 8080}]}]});
        assert_eq!(cell_strs("Endpoints", &v6)[1], "[fd00::1]:8080");
        let headless = json!({"subsets": [{"addresses": [{"ip": "10.0.0.9"}]}]});
        assert_eq!(cell_strs("Endpoints", &headless)[1], "10.0.0.9");
    }

    #[test]
    fn endpoint_slice_ports_and_addresses() {
        let s = json!({"metadata": {"name": "s"}, "addressType": "IPv4",
            "ports": [{"port": 80}, {"name": "dns"}, {}],
            "endpoints": [{"addresses": ["10.0.0.1", "10.0.0.2"]}, {"addresses": ["10.0.0.3", "10.0.0.4"]}]});
        let c = cell_strs("EndpointSlice", &s);
        assert_eq!(c[1..4], ["IPv4", "80,dns,*", "10.0.0.1,10.0.0.2,10.0.0.3 + 1 more..."]);
        assert_eq!(cell_strs("EndpointSlice", &json!({}))[3], "<unset>");
    }

    // ---- workloads ------------------------------------------------------------

    #[test]
    fn deployment_ready_column_and_integer_cells() {
        let d = json!({
            "metadata": {"name": "web", "creationTimestamp": ago(7200)},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]},
                     "template": {"spec": {"containers": [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
        });
        let c = cells("Deployment", &d, NOW);
        assert_eq!(c[1], json!("2/3"));
        assert_eq!(c[2], json!(3));
        assert_eq!(c[3], json!(2));
        assert_eq!(c[4], json!("120m"));
        assert_eq!(c[5], json!("a,b"));
        assert_eq!(c[6], json!("nginx:1,busybox"));
        assert_eq!(c[7], json!("app=web,env in (dev,prod)"));
    }

    #[test]
    fn deployment_without_status_defaults_to_one_desired_replica() {
        let c = cells("Deployment", &json!({"metadata": {"name": "d"}}), NOW);
        assert_eq!(c[1], json!("0/1"));
        assert_eq!(c[7], json!(""));
    }

    #[test]
    fn replica_set_daemon_set_and_stateful_set_cells() {
        let rs = json!({"metadata": {"name": "rs"}, "spec": {"replicas": 2, "selector": {}}, "status": {"replicas": 2, "readyReplicas": 1}});
        let c = cells("ReplicaSet", &rs, NOW);
        assert_eq!(c[1..4], [json!(2), json!(2), json!(1)]);
        assert_eq!(c[7], json!("<none>"));
        let ds = json!({"metadata": {"name": "ds"}, "spec": {"template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}},
                        "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}});
        let c = cells("DaemonSet", &ds, NOW);
        assert_eq!(c[1..7], [json!(3), json!(3), json!(2), json!(3), json!(2), json!("kubernetes.io/os=linux")]);
        let ss = json!({"metadata": {"name": "ss"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 3}});
        assert_eq!(cells("StatefulSet", &ss, NOW)[1], json!("3/3"));
    }

    #[test]
    fn job_status_completions_and_duration() {
        let j = json!({
            "metadata": {"name": "j"},
            "spec": {"completions": 1, "selector": {"matchLabels": {"job": "j"}}},
            "status": {"succeeded": 1, "startTime": ago(600), "completionTime": ago(500),
                       "conditions": [{"type": "Complete", "status": "True"}]},
        });
        let c = cell_strs("Job", &j);
        assert_eq!(c[1..4], ["Complete", "1/1", "100s"]);
        assert_eq!(c[7], "job=j");
        let running = json!({"spec": {"parallelism": 3}, "status": {"startTime": ago(30)}});
        assert_eq!(cell_strs("Job", &running)[1..4], ["Running", "0/1 of 3", "30s"]);
        let suspended = json!({"status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
        assert_eq!(cell_strs("Job", &suspended)[1..4], ["Suspended", "0/1", ""]);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}});
        assert_eq!(cell_strs("Job", &failed)[1], "Failed");
    }

    #[test]
    fn cron_job_cells() {
        let cj = json!({"metadata": {"name": "cj"}, "spec": {"schedule": "*/5 * * * *", "suspend": false},
                        "status": {"active": [{"name": "x"}], "lastScheduleTime": ago(120)}});
        let c = cells("CronJob", &cj, NOW);
        assert_eq!(c[1..6], [json!("*/5 * * * *"), json!("<none>"), json!("False"), json!(1), json!("2m")]);
        let never = json!({"spec": {"timeZone": "Etc/UTC", "suspend": true}});
        let c = cells("CronJob", &never, NOW);
        assert_eq!(c[2..6], [json!("Etc/UTC"), json!("True"), json!(0), json!("<none>")]);
    }

    #[test]
    fn controller_revision_names_its_controller() {
        let cr = json!({"metadata": {"name": "web-7d9", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]}, "revision": 4});
        assert_eq!(cells("ControllerRevision", &cr, NOW)[1..3], [json!("statefulset.apps/web"), json!(4)]);
        assert_eq!(cells("ControllerRevision", &json!({}), NOW)[1], json!("<none>"));
    }

    // ---- config, storage, misc -------------------------------------------------

    #[test]
    fn config_map_and_secret_data_counts_are_numbers() {
        let cm = json!({"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(cells("ConfigMap", &cm, NOW)[1], json!(3));
        let s = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
        assert_eq!(cells("Secret", &s, NOW)[1..3], [json!("kubernetes.io/tls"), json!(2)]);
        assert_eq!(cells("Secret", &json!({}), NOW)[1], json!("Opaque"));
        assert_eq!(cells("ServiceAccount", &json!({"secrets": [{"name": "t"}]}), NOW)[1], json!(1));
    }

    #[test]
    fn persistent_volume_and_claim_cells() {
        let pv = json!({"metadata": {"name": "pv1"}, "spec": {
            "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce", "ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": "ns", "name": "data"},
            "storageClassName": "fast", "volumeMode": "Filesystem"}, "status": {"phase": "Bound"}});
        assert_eq!(
            cell_strs("PersistentVolume", &pv),
            ["pv1", "10Gi", "RWO,RWX", "Retain", "Bound", "ns/data", "fast", "<unset>", "", "<unknown>", "Filesystem"]
        );
        let pvc = json!({"metadata": {"name": "data", "annotations": {"volume.beta.kubernetes.io/storage-class": "old"}},
            "spec": {"volumeName": "pv1", "storageClassName": "fast"},
            "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOncePod"]}});
        assert_eq!(cell_strs("PersistentVolumeClaim", &pvc)[1..7], ["Bound", "pv1", "10Gi", "RWOP", "old", "<unset>"]);
        let pending = json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Pending"}});
        assert_eq!(cell_strs("PersistentVolumeClaim", &pending)[1..5], ["Pending", "", "", ""]);
    }

    #[test]
    fn storage_class_marks_default_and_applies_defaults() {
        let sc = json!({"metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                        "provisioner": "rancher.io/local-path"});
        let c = cells("StorageClass", &sc, NOW);
        assert_eq!(c[..5], [json!("standard (default)"), json!("rancher.io/local-path"), json!("Delete"), json!("Immediate"), json!(false)]);
    }

    #[test]
    fn pdb_hpa_priority_class_and_lease_cells() {
        let pdb = json!({"spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}});
        assert_eq!(cells("PodDisruptionBudget", &pdb, NOW)[1..4], [json!("50%"), json!("N/A"), json!(1)]);
        let hpa = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                        {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}},
                        {"type": "Pods", "pods": {"target": {"averageValue": "1k"}}}]},
            "status": {"currentReplicas": 2, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}]}});
        assert_eq!(
            cells("HorizontalPodAutoscaler", &hpa, NOW)[1..6],
            [json!("Deployment/web"), json!("cpu: 12%/80%, memory: <unknown>/500Mi + 1 more..."), json!("1"), json!(5), json!(2)]
        );
        let v1 = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}});
        assert_eq!(cells("HorizontalPodAutoscaler", &v1, NOW)[2..4], [json!("cpu: <unknown>/50%"), json!("<unset>")]);
        let pc = json!({"metadata": {"name": "high"}, "value": 1000, "globalDefault": true, "preemptionPolicy": "Never"});
        let c = cells("PriorityClass", &pc, NOW);
        assert_eq!((c[1].clone(), c[2].clone(), c[4].clone()), (json!(1000), json!(true), json!("Never")));
        assert_eq!(cells("Lease", &json!({"spec": {"holderIdentity": "node-1"}}), NOW)[1], json!("node-1"));
    }

    #[test]
    fn resource_quota_splits_requests_and_limits_before_age() {
        assert_eq!(col_names("ResourceQuota"), ["Name", "Request", "Limit", "Age"]);
        let rq = json!({"status": {"hard": {"pods": "10", "requests.cpu": "2", "limits.memory": "4Gi", "limits.cpu": "4"},
                                    "used": {"pods": "3", "limits.cpu": "1"}}});
        assert_eq!(
            cell_strs("ResourceQuota", &rq)[1..3],
            ["pods: 3/10, requests.cpu: 0/2", "limits.cpu: 1/4, limits.memory: 0/4Gi"]
        );
    }

    #[test]
    fn bindings_show_role_ref_and_subjects() {
        let rb = json!({"metadata": {"name": "rb"}, "roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [
            {"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"}, {"kind": "User", "name": "bob"},
            {"kind": "ServiceAccount", "namespace": "ns", "name": "sa"}]});
        assert_eq!(cell_strs("RoleBinding", &rb)[1..], ["ClusterRole/view", "<unknown>", "alice, bob", "devs", "ns/sa"]);
    }

    #[test]
    fn ingress_and_ingress_class_cells() {
        let ing = json!({"metadata": {"name": "i"}, "spec": {"ingressClassName": "nginx", "tls": [{}],
            "rules": [{"host": "a.example"}, {}, {"host": "b.example"}, {"host": "c.example"}, {"host": "d.example"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        assert_eq!(cell_strs("Ingress", &ing)[1..5], ["nginx", "a.example,b.example,c.example + 2 more...", "1.2.3.4", "80, 443"]);
        assert_eq!(cell_strs("Ingress", &json!({}))[1..5], ["<none>", "*", "", "80"]);
        let ic = json!({"spec": {"controller": "k8s.io/ingress-nginx", "parameters": {"apiGroup": "k8s.example.com", "kind": "Params", "name": "p"}}});
        assert_eq!(cell_strs("IngressClass", &ic)[1..3], ["k8s.io/ingress-nginx", "Params.k8s.example.com/p"]);
    }

    #[test]
    fn network_policy_pod_selector() {
        let np = json!({"spec": {"podSelector": {"matchExpressions": [{"key": "role", "operator": "Exists"}, {"key": "app", "operator": "DoesNotExist"}]}}});
        assert_eq!(cell_strs("NetworkPolicy", &np)[1], "!app,role");
        assert_eq!(cell_strs("NetworkPolicy", &json!({"spec": {"podSelector": {}}}))[1], "<none>");
        let bad = json!({"spec": {"podSelector": {"matchExpressions": [{"key": "x", "operator": "Bogus"}]}}});
        assert_eq!(cell_strs("NetworkPolicy", &bad)[1], "<error>");
    }

    #[test]
    fn event_columns_and_cells_for_core_and_events_api() {
        assert_eq!(
            col_names("Event"),
            ["Last Seen", "Type", "Reason", "Object", "Subobject", "Source", "Message", "First Seen", "Count", "Name"]
        );
        let ev = json!({"metadata": {"name": "p.123"}, "type": "Normal", "reason": "Pulled", "message": " pulled image \n",
            "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{a}"},
            "source": {"component": "kubelet", "host": "n1"}, "firstTimestamp": ago(600), "lastTimestamp": ago(60), "count": 3});
        assert_eq!(
            cell_strs("Event", &ev),
            ["60s", "Normal", "Pulled", "pod/p", "spec.containers{a}", "kubelet, n1", "pulled image", "10m", "3", "p.123"]
        );
        let new_api = json!({"metadata": {"name": "e"}, "type": "Warning", "reason": "Failed", "note": "boom",
            "regarding": {"kind": "Node", "name": "n1"}, "reportingController": "ctl", "reportingInstance": "ctl-1",
            "eventTime": "2023-11-14T22:13:00.000000Z", "series": {"count": 7, "lastObservedTime": "2023-11-14T22:13:15.000000Z"}});
        assert_eq!(cell_strs("Event", &new_api), ["5s", "Warning", "Failed", "node/n1", "", "ctl, ctl-1", "boom", "20s", "7", "e"]);
        let singleton = json!({"eventTime": ago(3), "involvedObject": {"kind": "Namespace"}});
        let c = cell_strs("Event", &singleton);
        assert_eq!((c[0].as_str(), c[3].as_str(), c[8].as_str()), ("3s", "namespace", "1"));
    }

    #[test]
    fn generic_kinds_show_created_at_as_rfc3339_utc() {
        let cols = columns("ClusterRole");
        assert_eq!(cols.iter().map(|c| (c.name, c.type_)).collect::<Vec<_>>(), [("Name", "string"), ("Created At", "date")]);
        let r = json!({"metadata": {"name": "admin", "creationTimestamp": "2024-05-01T12:00:00.5+02:00"}});
        assert_eq!(cell_strs("Role", &r), ["admin", "2024-05-01T10:00:00Z"]);
        assert_eq!(cell_strs("LimitRange", &json!({}))[1], "0001-01-01T00:00:00Z");
    }

    #[test]
    fn unknown_kind_falls_back_to_name_and_age() {
        let cols = columns("Widget");
        assert_eq!(cols.iter().map(|c| c.name).collect::<Vec<_>>(), ["Name", "Age"]);
        assert_eq!(cols[0].format, "name");
        let w = json!({"metadata": {"name": "w1", "creationTimestamp": ago(90)}});
        assert_eq!(cell_strs("Widget", &w), ["w1", "90s"]);
        assert_eq!(cell_strs("Widget", &json!({})), ["", "<unknown>"]);
    }

    #[test]
    fn every_kind_has_matching_cell_count_and_survives_garbage_input() {
        let garbage = [
            json!(null),
            json!(42),
            json!("pod"),
            json!([1, 2]),
            json!({}),
            json!({"metadata": 5, "spec": "x", "status": [], "data": 3, "subsets": {}}),
            json!({"metadata": {"name": 7, "labels": [], "creationTimestamp": 12, "deletionTimestamp": true},
                   "spec": {"containers": {}, "initContainers": [1], "ports": [null, {"port": "x"}], "selector": "a",
                            "replicas": "3", "type": 9, "metrics": [{"type": "Resource"}, {"type": "External"}]},
                   "status": {"containerStatuses": [null, {"state": 3}], "initContainerStatuses": [{"state": {"terminated": {"exitCode": "1"}}}],
                              "conditions": [null], "hard": {"cpu": 1}, "loadBalancer": {"ingress": [null]}}}),
        ];
        for kind in ALL_KINDS {
            let n = columns(kind).len();
            for g in &garbage {
                assert_eq!(cells(kind, g, NOW).len(), n, "{kind} with {g}");
            }
        }
    }

    #[test]
    fn every_column_set_starts_with_name_column() {
        for kind in ALL_KINDS.iter().filter(|k| **k != "Event") {
            let cols = columns(kind);
            assert_eq!((cols[0].name, cols[0].format), ("Name", "name"), "{kind}");
        }
    }

    // ---- table() -----------------------------------------------------------------

    #[test]
    fn table_with_headers_and_metadata_object() {
        let p = pod(json!({"phase": "Running"}));
        let t = table("Pod", std::slice::from_ref(&p), "42", Some("tok"), Some(7), "Metadata", true, NOW);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({"resourceVersion": "42", "continue": "tok", "remainingItemCount": 7}));
        let cols = t["columnDefinitions"].as_array().expect("array");
        assert_eq!(cols.len(), 9);
        assert_eq!(cols[0], json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESC, "priority": 0}));
        assert_eq!(cols[5]["priority"], 1);
        let row = &t["rows"][0];
        assert_eq!(row["cells"].as_array().map(|a| a.len()), Some(9));
        assert_eq!(
            row["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": p["metadata"].clone()})
        );
        assert!(row.get("conditions").is_none());
    }

    #[test]
    fn table_include_object_variants() {
        let p = pod(json!({"phase": "Running"}));
        let objs = std::slice::from_ref(&p);
        let full = table("Pod", objs, "1", None, None, "Object", true, NOW);
        assert_eq!(full["rows"][0]["object"], p);
        let none = table("Pod", objs, "1", None, None, "None", true, NOW);
        assert!(none["rows"][0].get("object").is_none());
        let default = table("Pod", objs, "1", None, None, "", true, NOW);
        assert_eq!(default["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        let no_meta = table("Widget", &[json!({"spec": {}})], "1", None, None, "Metadata", true, NOW);
        assert_eq!(no_meta["rows"][0]["object"]["metadata"], json!({}));
    }

    #[test]
    fn table_without_headers_has_empty_column_definitions() {
        let t = table("Service", &[json!({"metadata": {"name": "s"}})], "5", None, None, "None", false, NOW);
        assert_eq!(t["columnDefinitions"], json!([]));
        assert_eq!(t["rows"][0]["cells"].as_array().map(|a| a.len()), Some(7));
        assert_eq!(t["metadata"], json!({"resourceVersion": "5"}));
    }

    #[test]
    fn table_of_no_objects_has_empty_rows() {
        let t = table("Pod", &[], "", None, None, "Metadata", true, NOW);
        assert_eq!(t["rows"], json!([]));
        assert_eq!(t["metadata"], json!({}));
    }

    #[test]
    fn table_marks_finished_pods_with_completed_condition() {
        let t = table("Pod", &[pod(json!({"phase": "Succeeded"})), pod(json!({"phase": "Failed"}))], "1", None, None, "None", true, NOW);
        assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");
        assert_eq!(t["rows"][0]["conditions"][0]["type"], "Completed");
        assert_eq!(t["rows"][1]["conditions"][0]["reason"], "Failed");
    }
}
