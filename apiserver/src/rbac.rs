//! RBAC authorization (rbac.authorization.k8s.io/v1), with the semantics of the upstream
//! authorizer in plugin/pkg/auth/authorizer/rbac: bindings select subjects, roles list
//! additive rules, and anything not allowed is denied. Objects are read as JSON wire form;
//! malformed fields simply match nothing, so no input can make this panic.

use crate::error::go_quote;
use serde_json::{json, Map, Value};

/// What a request wants to do (authorizer.Attributes).
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    pub user: String,
    /// Already includes system:authenticated (and the service-account groups) where due.
    pub groups: Vec<String>,
    /// get list watch create update patch delete deletecollection, or for non-resource
    /// requests the lowercased HTTP verb (get post put delete ...).
    pub verb: String,
    pub resource_request: bool,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// For non-resource requests, e.g. /healthz, /version, /api.
    pub path: String,
}

/// The RBAC objects needed to decide. The caller loads them from the store.
pub struct Policy<'a> {
    pub cluster_roles: &'a [Value],
    pub cluster_role_bindings: &'a [Value],
    /// Roles of any namespace; only those in the binding's namespace are used.
    pub roles: &'a [Value],
    /// RoleBindings of any namespace; only those in the request's namespace are used.
    pub role_bindings: &'a [Value],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Reason text (upstream's "RBAC: ..." resolution errors), may be empty.
    Deny(String),
}

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const ALL: &str = "*";

/// Cluster role bindings are consulted first, then role bindings of the request's namespace;
/// the first rule that allows wins. Unresolvable role references contribute to the reason.
pub fn authorize(a: &Attributes, p: &Policy) -> Decision {
    let mut errors: Vec<String> = Vec::new();

    for binding in p.cluster_role_bindings {
        if !applies_to(a, binding, "") {
            continue;
        }
        match role_rules(p, binding, "") {
            Ok(rules) if rules.iter().any(|r| rule_allows(a, r)) => return Decision::Allow,
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }

    // Role bindings only ever grant within their own namespace, so cluster-scoped requests
    // never consult them.
    if !a.namespace.is_empty() {
        for binding in p.role_bindings {
            if str_at(binding, &["metadata", "namespace"]) != a.namespace {
                continue;
            }
            if !applies_to(a, binding, &a.namespace) {
                continue;
            }
            match role_rules(p, binding, &a.namespace) {
                Ok(rules) if rules.iter().any(|r| rule_allows(a, r)) => return Decision::Allow,
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
    }

    Decision::Deny(if errors.is_empty() {
        String::new()
    } else {
        format!("RBAC: {}", aggregate(&errors))
    })
}

/// Whether any subject of the binding is the requesting user. `namespace` is the binding's
/// namespace ("" for cluster role bindings): a ServiceAccount subject without a namespace
/// means the binding's own namespace.
fn applies_to(a: &Attributes, binding: &Value, namespace: &str) -> bool {
    let Some(subjects) = binding.get("subjects").and_then(Value::as_array) else {
        return false;
    };
    subjects.iter().any(|s| {
        let name = str_at(s, &["name"]);
        match str_at(s, &["kind"]) {
            "User" => a.user == name,
            "Group" => a.groups.iter().any(|g| g == name),
            "ServiceAccount" => {
                let ns = match str_at(s, &["namespace"]) {
                    "" => namespace,
                    ns => ns,
                };
                !ns.is_empty() && is_service_account_user(&a.user, ns, name)
            }
            _ => false,
        }
    })
}

/// user == "system:serviceaccount:<ns>:<name>", compared without allocating.
fn is_service_account_user(user: &str, ns: &str, name: &str) -> bool {
    user.strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.strip_prefix(ns))
        .and_then(|rest| rest.strip_prefix(':'))
        == Some(name)
}

/// The rules the binding's roleRef points at, or upstream's error text when unresolvable.
fn role_rules<'p>(p: &Policy<'p>, binding: &Value, namespace: &str) -> Result<&'p [Value], String> {
    let name = str_at(binding, &["roleRef", "name"]);
    let found = match str_at(binding, &["roleRef", "kind"]) {
        "Role" => p.roles.iter().find(|r| {
            // A Role only exists inside a namespace, so a cluster binding cannot find one.
            !namespace.is_empty()
                && str_at(r, &["metadata", "namespace"]) == namespace
                && str_at(r, &["metadata", "name"]) == name
        }),
        "ClusterRole" => p
            .cluster_roles
            .iter()
            .find(|r| str_at(r, &["metadata", "name"]) == name),
        kind => {
            return Err(format!(
                "unsupported role reference kind: {}",
                go_quote(kind)
            ))
        }
    };
    match found {
        Some(role) => Ok(role
            .get("rules")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])),
        None => {
            let resource = if str_at(binding, &["roleRef", "kind"]) == "Role" {
                "role"
            } else {
                "clusterrole"
            };
            Err(format!(
                "{resource}.{RBAC_GROUP} {} not found",
                go_quote(name)
            ))
        }
    }
}

/// One PolicyRule against the request (upstream RuleAllows).
fn rule_allows(a: &Attributes, rule: &Value) -> bool {
    let verb_ok = strs(rule, "verbs").any(|v| v == ALL || v == a.verb);
    if !verb_ok {
        return false;
    }
    if !a.resource_request {
        return strs(rule, "nonResourceURLs").any(|u| {
            u == ALL
                || u == a.path
                || (u.ends_with('*') && a.path.starts_with(u.trim_end_matches('*')))
        });
    }

    if !strs(rule, "apiGroups").any(|g| g == ALL || g == a.api_group) {
        return false;
    }

    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = strs(rule, "resources").any(|r| {
        r == ALL
            || r == combined
            // "*/scale" grants the scale subresource of every resource.
            || (!a.subresource.is_empty()
                && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    if !resource_ok {
        return false;
    }

    // A rule naming objects cannot grant unnamed requests (create, list, watch,
    // deletecollection), because there is no name to check.
    let mut names = strs(rule, "resourceNames").peekable();
    if names.peek().is_none() {
        return true;
    }
    !a.name.is_empty() && names.any(|n| n == a.name)
}

/// String members of an array field; anything else in it is ignored.
fn strs<'v>(v: &'v Value, key: &str) -> impl Iterator<Item = &'v str> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .filter_map(Value::as_str)
}

/// The string at a path of object keys, or "" when absent or not a string.
fn str_at<'v>(v: &'v Value, path: &[&str]) -> &'v str {
    let mut cur = v;
    for key in path {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return "",
        }
    }
    cur.as_str().unwrap_or("")
}

/// utilerrors.NewAggregate(...).Error(): one message alone, otherwise "[a, b]" with
/// duplicates dropped.
fn aggregate(errors: &[String]) -> String {
    if errors.len() == 1 {
        return errors[0].clone();
    }
    let mut seen: Vec<&str> = Vec::new();
    for e in errors {
        if !seen.contains(&e.as_str()) {
            seen.push(e);
        }
    }
    if seen.len() == 1 {
        return seen[0].to_string();
    }
    format!("[{}]", seen.join(", "))
}

/// The Forbidden message exactly as Kubernetes words it (responsewriters.Forbidden wrapped
/// by apierrors.NewForbidden), with `: <reason>` appended when the reason is non-empty.
pub fn forbidden_message(a: &Attributes, reason: &str) -> String {
    let mut msg = if !a.resource_request {
        format!(
            "User {} cannot {} path {}",
            go_quote(&a.user),
            a.verb,
            go_quote(&a.path)
        )
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {}", go_quote(&a.namespace))
        };
        format!(
            "User {} cannot {} resource {} in API group {} {}",
            go_quote(&a.user),
            a.verb,
            go_quote(&resource),
            go_quote(&a.api_group),
            scope
        )
    };
    // Upstream escapes the message (not the reason) so it never reads as HTML.
    msg = msg
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    if !reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(reason);
    }

    // NewForbidden's prefix: the group-qualified resource, plus the quoted name if any.
    let (group, resource) = if a.resource_request {
        (a.api_group.as_str(), a.resource.as_str())
    } else {
        ("", "")
    };
    if group.is_empty() && resource.is_empty() {
        return format!("forbidden: {msg}");
    }
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    if a.name.is_empty() {
        format!("{qualified} is forbidden: {msg}")
    } else {
        format!("{qualified} {} is forbidden: {msg}", go_quote(&a.name))
    }
}

// ---------------------------------------------------------------------------------------
// Bootstrap policy
// ---------------------------------------------------------------------------------------

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "delete",
    "deletecollection",
    "patch",
    "update",
];

/// Sorted and deduplicated, as upstream's rule builder serializes lists.
fn sorted(xs: &[&str]) -> Value {
    let mut v: Vec<&str> = xs.to_vec();
    v.sort_unstable();
    v.dedup();
    json!(v)
}

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({ "verbs": sorted(verbs), "apiGroups": sorted(groups), "resources": sorted(resources) })
}

fn named_rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Value {
    let mut r = rule(verbs, groups, resources);
    if let Some(obj) = r.as_object_mut() {
        obj.insert("resourceNames".into(), sorted(names));
    }
    r
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({ "verbs": sorted(verbs), "nonResourceURLs": sorted(urls) })
}

fn events_rule() -> Value {
    rule(
        &["create", "update", "patch"],
        &["", "events.k8s.io"],
        &["events"],
    )
}

fn metadata(name: &str, extra_labels: &[(&str, &str)]) -> Value {
    let mut labels = Map::new();
    labels.insert("kubernetes.io/bootstrapping".into(), json!("rbac-defaults"));
    for (k, v) in extra_labels {
        labels.insert((*k).into(), json!(v));
    }
    json!({
        "name": name,
        "labels": labels,
        "annotations": { "rbac.authorization.kubernetes.io/autoupdate": "true" },
    })
}

fn cluster_role(name: &str, extra_labels: &[(&str, &str)], rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": metadata(name, extra_labels),
        "rules": rules,
    })
}

/// An aggregated role with its rules already flattened (nothing here re-aggregates), keeping
/// the aggregationRule so the object reads like upstream's.
fn aggregated_role(
    name: &str,
    extra_labels: &[(&str, &str)],
    selector: &str,
    rules: Vec<Value>,
) -> Value {
    let mut role = cluster_role(name, extra_labels, rules);
    if let Some(obj) = role.as_object_mut() {
        obj.insert(
            "aggregationRule".into(),
            json!({ "clusterRoleSelectors": [ { "matchLabels": { selector: "true" } } ] }),
        );
    }
    role
}

fn binding(name: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": metadata(name, &[]),
        "roleRef": { "apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name },
        "subjects": subjects,
    })
}

fn group(name: &str) -> Value {
    json!({ "apiGroup": RBAC_GROUP, "kind": "Group", "name": name })
}

fn user(name: &str) -> Value {
    json!({ "apiGroup": RBAC_GROUP, "kind": "User", "name": name })
}

fn aggregate_to_view_rules() -> Vec<Value> {
    vec![
        rule(
            READ,
            &[""],
            &[
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "configmaps",
            ],
        ),
        rule(
            READ,
            &[""],
            &[
                "limitranges",
                "resourcequotas",
                "bindings",
                "events",
                "pods/status",
                "resourcequotas/status",
                "namespaces/status",
                "replicationcontrollers/status",
                "pods/log",
            ],
        ),
        // Read access to namespaces at namespace scope means reading *this* namespace.
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "statefulsets",
                "statefulsets/status",
                "statefulsets/scale",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/status",
                "deployments/scale",
                "replicasets",
                "replicasets/status",
                "replicasets/scale",
            ],
        ),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["jobs", "cronjobs", "cronjobs/status", "jobs/status"],
        ),
        rule(
            READ,
            &["extensions"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "ingresses",
                "ingresses/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses", "ingresses/status"],
        ),
    ]
}

fn aggregate_to_edit_rules() -> Vec<Value> {
    vec![
        // Reading these escalates (secrets, exec), hence edit and not view.
        rule(
            READ,
            &[""],
            &[
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
                "secrets",
                "services/proxy",
            ],
        ),
        rule(&["impersonate"], &[""], &["serviceaccounts"]),
        rule(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/proxy",
                "pods/exec",
                "pods/portforward",
            ],
        ),
        rule(&["create"], &[""], &["pods/eviction"]),
        // No endpoints writes: removed upstream (CVE-2021-25740).
        rule(
            WRITE,
            &[""],
            &[
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/proxy",
                "persistentvolumeclaims",
                "configmaps",
                "secrets",
                "events",
            ],
        ),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            WRITE,
            &["apps"],
            &[
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
            ],
        ),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        rule(WRITE, &["batch"], &["jobs", "cronjobs"]),
        rule(
            WRITE,
            &["extensions"],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "ingresses",
                "replicasets",
                "replicasets/scale",
                "replicationcontrollers/scale",
                "networkpolicies",
            ],
        ),
        rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["networkpolicies", "ingresses"],
        ),
    ]
}

fn aggregate_to_admin_rules() -> Vec<Value> {
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(READ_WRITE, &[RBAC_GROUP], &["roles", "rolebindings"]),
    ]
}

fn node_rules() -> Vec<Value> {
    vec![
        // Non-mutating API access checks.
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        // Service env vars for pods.
        rule(READ, &[""], &["services"]),
        // Self-registration and status.
        rule(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        rule(&["get", "update", "patch"], &[""], &["nodes/status"]),
        rule(&["update", "patch"], &[""], &["nodes"]),
        rule(&["create", "update", "patch"], &[""], &["events"]),
        rule(READ, &[""], &["pods"]),
        // Mirror pods.
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["get", "update", "patch"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        // Volumes and env from secrets/configmaps.
        rule(READ, &[""], &["secrets", "configmaps"]),
        rule(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(&["get"], &[""], &["endpoints"]),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        // Node heartbeats in kube-node-lease (a ClusterRole cannot narrow the namespace).
        rule(
            &["get", "create", "update", "patch", "delete"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        rule(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        rule(
            &["get", "update", "patch"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(
            &["get", "create", "update", "patch", "delete"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
    ]
}

fn scheduler_rules() -> Vec<Value> {
    vec![
        events_rule(),
        // Leader election.
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named_rule(
            &["get", "update", "patch"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-scheduler", "kuberaft-scheduler"],
        ),
        rule(READ, &[""], &["nodes"]),
        rule(&["get", "list", "watch", "delete"], &[""], &["pods"]),
        rule(&["create"], &[""], &["pods/binding", "bindings"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        rule(READ, &[""], &["replicationcontrollers", "services"]),
        rule(READ, &["apps", "extensions"], &["replicasets"]),
        rule(READ, &["apps"], &["statefulsets"]),
        rule(READ, &["policy"], &["poddisruptionbudgets"]),
        rule(
            READ,
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        // Upstream's system:volume-scheduler, bound to the scheduler: it annotates claims with
        // the node it picked (delayed binding) and may bind them.
        rule(
            &["update", "patch"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        rule(READ, &["storage.k8s.io"], &["storageclasses"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        rule(READ, &["storage.k8s.io"], &["csinodes"]),
        rule(READ, &[""], &["namespaces"]),
        rule(READ, &["storage.k8s.io"], &["csidrivers"]),
        rule(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
    ]
}

fn controller_manager_rules() -> Vec<Value> {
    vec![
        // Upstream's own rules for the controller-manager identity.
        events_rule(),
        rule(&["create"], &["coordination.k8s.io"], &["leases"]),
        named_rule(
            &["get", "update", "patch"],
            &["coordination.k8s.io"],
            &["leases"],
            &["kube-controller-manager", "kuberaft-controller-manager"],
        ),
        rule(&["create"], &[""], &["secrets", "serviceaccounts"]),
        rule(&["delete"], &[""], &["secrets"]),
        rule(
            &["get"],
            &[""],
            &["namespaces", "secrets", "serviceaccounts", "configmaps"],
        ),
        rule(&["update"], &[""], &["secrets", "serviceaccounts"]),
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews"],
        ),
        rule(&["list", "watch"], &[ALL], &[ALL]),
        rule(&["create"], &[""], &["serviceaccounts/token"]),
        // Upstream runs each controller under its own service account; here every controller
        // runs in-process as this one user, so it holds the union of those roles. The garbage
        // collector and namespace deleter alone need every verb on every resource.
        rule(READ_WRITE, &[ALL], &[ALL]),
        rule(&["approve", "sign"], &["certificates.k8s.io"], &["signers"]),
        rule(
            &["escalate", "bind"],
            &[RBAC_GROUP],
            &["clusterroles", "roles"],
        ),
    ]
}

/// The default ClusterRoles and ClusterRoleBindings an empty cluster gets.
pub fn bootstrap_policy() -> Vec<Value> {
    let view = aggregate_to_view_rules();
    let edit: Vec<Value> = aggregate_to_edit_rules()
        .into_iter()
        .chain(view.clone())
        .collect();
    let admin: Vec<Value> = aggregate_to_admin_rules()
        .into_iter()
        .chain(edit.clone())
        .collect();
    const TO_ADMIN: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-admin", "true");
    const TO_EDIT: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-edit", "true");
    const TO_VIEW: (&str, &str) = ("rbac.authorization.k8s.io/aggregate-to-view", "true");

    let roles = vec![
        cluster_role(
            "cluster-admin",
            &[],
            vec![rule(&[ALL], &[ALL], &[ALL]), url_rule(&[ALL], &[ALL])],
        ),
        cluster_role(
            "system:discovery",
            &[],
            vec![url_rule(
                &["get"],
                &[
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/version",
                    "/version/",
                    "/openapi",
                    "/openapi/*",
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                ],
            )],
        ),
        cluster_role(
            "system:monitoring",
            &[],
            vec![url_rule(
                &["get"],
                &[
                    "/metrics",
                    "/metrics/slis",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            &[],
            vec![url_rule(
                &["get"],
                &["/livez", "/readyz", "/healthz", "/version", "/version/"],
            )],
        ),
        aggregated_role("admin", &[], TO_ADMIN.0, admin),
        aggregated_role("edit", &[TO_ADMIN], TO_EDIT.0, edit),
        aggregated_role("view", &[TO_EDIT], TO_VIEW.0, view.clone()),
        cluster_role(
            "system:aggregate-to-admin",
            &[TO_ADMIN],
            aggregate_to_admin_rules(),
        ),
        cluster_role(
            "system:aggregate-to-edit",
            &[TO_EDIT],
            aggregate_to_edit_rules(),
        ),
        cluster_role("system:aggregate-to-view", &[TO_VIEW], view),
        cluster_role("system:node", &[], node_rules()),
        cluster_role(
            "system:node-proxier",
            &[],
            vec![
                rule(&["list", "watch"], &[""], &["services", "endpoints"]),
                rule(READ, &[""], &["nodes"]),
                events_rule(),
                rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        cluster_role(
            "system:auth-delegator",
            &[],
            vec![
                rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        cluster_role("system:kube-scheduler", &[], scheduler_rules()),
        cluster_role(
            "system:volume-scheduler",
            &[],
            vec![
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                rule(READ, &["storage.k8s.io"], &["storageclasses"]),
                rule(
                    &["get", "list", "watch", "update", "patch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            &[],
            controller_manager_rules(),
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            &[],
            vec![url_rule(
                &["get"],
                &["/.well-known/openid-configuration", "/openid/v1/jwks"],
            )],
        ),
    ];

    let bindings = vec![
        binding("cluster-admin", vec![group("system:masters")]),
        binding("system:monitoring", vec![group("system:monitoring")]),
        binding("system:discovery", vec![group("system:authenticated")]),
        binding("system:basic-user", vec![group("system:authenticated")]),
        binding(
            "system:public-info-viewer",
            vec![
                group("system:authenticated"),
                group("system:unauthenticated"),
            ],
        ),
        // Upstream leaves this binding empty and relies on the Node authorizer; there is no
        // Node authorizer here, so kubelets get the role through their group.
        binding("system:node", vec![group("system:nodes")]),
        binding("system:node-proxier", vec![user("system:kube-proxy")]),
        binding(
            "system:kube-controller-manager",
            vec![user("system:kube-controller-manager")],
        ),
        binding("system:kube-scheduler", vec![user("system:kube-scheduler")]),
        binding(
            "system:volume-scheduler",
            vec![user("system:kube-scheduler")],
        ),
        binding(
            "system:service-account-issuer-discovery",
            vec![group("system:serviceaccounts")],
        ),
    ];

    roles.into_iter().chain(bindings).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            user: user.into(),
            groups: vec!["system:authenticated".into()],
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            namespace: ns.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn sub(mut a: Attributes, subresource: &str) -> Attributes {
        a.subresource = subresource.into();
        a
    }

    fn nonres(user: &str, groups: &[&str], verb: &str, path: &str) -> Attributes {
        Attributes {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            verb: verb.into(),
            resource_request: false,
            path: path.into(),
            ..Default::default()
        }
    }

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"namespace": ns, "name": name}, "rules": rules})
    }

    fn crole(name: &str, rules: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name}, "rules": rules})
    }

    fn rb(ns: &str, name: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"namespace": ns, "name": name},
               "roleRef": {"apiGroup": RBAC_GROUP, "kind": kind, "name": role},
               "subjects": subjects})
    }

    fn crb(name: &str, role: &str, subjects: Value) -> Value {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
               "subjects": subjects})
    }

    fn u(name: &str) -> Value {
        json!([{"kind": "User", "apiGroup": RBAC_GROUP, "name": name}])
    }

    #[derive(Default)]
    struct Objs {
        cr: Vec<Value>,
        crb: Vec<Value>,
        r: Vec<Value>,
        rb: Vec<Value>,
    }

    impl Objs {
        fn allows(&self, a: &Attributes) -> bool {
            authorize(a, &self.policy()) == Decision::Allow
        }
        fn policy(&self) -> Policy<'_> {
            Policy {
                cluster_roles: &self.cr,
                cluster_role_bindings: &self.crb,
                roles: &self.r,
                role_bindings: &self.rb,
            }
        }
    }

    fn bootstrap() -> Objs {
        let mut o = Objs::default();
        for v in bootstrap_policy() {
            match str_at(&v, &["kind"]) {
                "ClusterRole" => o.cr.push(v),
                "ClusterRoleBinding" => o.crb.push(v),
                other => panic!("unexpected kind {other}"),
            }
        }
        o
    }

    fn bind_to(o: &mut Objs, ns: &str, role: &str, user: &str) {
        o.rb.push(rb(
            ns,
            &format!("{role}-{user}"),
            "ClusterRole",
            role,
            u(user),
        ));
    }

    fn pod_reader() -> Value {
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
    }

    #[test]
    fn no_bindings_denies_with_exact_upstream_message_for_list_pods_in_default() {
        let o = Objs::default();
        let a = res("alice", "list", "", "pods", "default", "");
        let Decision::Deny(reason) = authorize(&a, &o.policy()) else {
            panic!("allowed")
        };
        assert_eq!(reason, "");
        assert_eq!(
            forbidden_message(&a, &reason),
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
        );
    }

    #[test]
    fn role_binding_grants_its_role_only_in_its_namespace() {
        let mut o = Objs::default();
        o.r.push(role("default", "pod-reader", pod_reader()));
        o.rb.push(rb("default", "read-pods", "Role", "pod-reader", u("alice")));
        for verb in ["get", "list", "watch"] {
            assert!(
                o.allows(&res("alice", verb, "", "pods", "default", "")),
                "{verb}"
            );
        }
        assert!(!o.allows(&res("alice", "create", "", "pods", "default", "")));
        assert!(!o.allows(&res("alice", "delete", "", "pods", "default", "web")));
        assert!(!o.allows(&res("alice", "list", "", "pods", "kube-system", "")));
        assert!(
            !o.allows(&res("alice", "list", "", "pods", "", "")),
            "all-namespaces list"
        );
        assert!(!o.allows(&res("bob", "list", "", "pods", "default", "")));
        assert!(!o.allows(&res("alice", "list", "", "services", "default", "")));
    }

    #[test]
    fn role_binding_resolves_role_in_its_own_namespace_only() {
        let mut o = Objs::default();
        // Same-named Role exists only in another namespace.
        o.r.push(role("other", "pod-reader", pod_reader()));
        o.rb.push(rb("default", "read-pods", "Role", "pod-reader", u("alice")));
        let a = res("alice", "list", "", "pods", "default", "");
        assert_eq!(
            authorize(&a, &o.policy()),
            Decision::Deny(r#"RBAC: role.rbac.authorization.k8s.io "pod-reader" not found"#.into())
        );
    }

    #[test]
    fn role_bindings_in_other_namespaces_are_ignored() {
        let mut o = Objs::default();
        o.r.push(role("other", "pod-reader", pod_reader()));
        o.rb.push(rb("other", "read-pods", "Role", "pod-reader", u("alice")));
        assert!(o.allows(&res("alice", "get", "", "pods", "other", "x")));
        assert!(!o.allows(&res("alice", "get", "", "pods", "default", "x")));
    }

    #[test]
    fn cluster_role_via_role_binding_is_namespace_limited() {
        let mut o = Objs::default();
        o.cr.push(crole(
            "reader",
            json!([
                {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list"]}
            ]),
        ));
        bind_to(&mut o, "dev", "reader", "alice");
        assert!(o.allows(&res("alice", "list", "", "pods", "dev", "")));
        assert!(!o.allows(&res("alice", "list", "", "pods", "prod", "")));
        // Cluster-scoped resources are never reachable through a RoleBinding.
        assert!(!o.allows(&res("alice", "list", "", "nodes", "", "")));
    }

    #[test]
    fn cluster_role_binding_grants_in_every_namespace_and_cluster_scope() {
        let mut o = Objs::default();
        o.cr.push(crole(
            "reader",
            json!([
                {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list"]}
            ]),
        ));
        o.crb.push(crb("reader-alice", "reader", u("alice")));
        assert!(o.allows(&res("alice", "list", "", "pods", "dev", "")));
        assert!(o.allows(&res("alice", "list", "", "pods", "", "")));
        assert!(o.allows(&res("alice", "list", "", "nodes", "", "")));
        assert!(!o.allows(&res("alice", "get", "", "nodes", "", "n1")));
    }

    #[test]
    fn resource_names_limit_to_named_objects_and_never_match_unnamed_requests() {
        let mut o = Objs::default();
        o.r.push(role(
            "default",
            "one-cm",
            json!([{
                "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["app-config"],
                "verbs": ["get", "update", "list", "watch", "create", "delete", "deletecollection"]
            }]),
        ));
        o.rb.push(rb("default", "b", "Role", "one-cm", u("alice")));
        assert!(o.allows(&res(
            "alice",
            "get",
            "",
            "configmaps",
            "default",
            "app-config"
        )));
        assert!(o.allows(&res(
            "alice",
            "update",
            "",
            "configmaps",
            "default",
            "app-config"
        )));
        assert!(!o.allows(&res("alice", "get", "", "configmaps", "default", "other")));
        for verb in ["list", "watch", "create", "deletecollection"] {
            assert!(
                !o.allows(&res("alice", verb, "", "configmaps", "default", "")),
                "{verb}"
            );
        }
    }

    #[test]
    fn subresources_are_granted_separately_from_their_resource() {
        let mut o = Objs::default();
        o.r.push(role(
            "default",
            "logs",
            json!([
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}
            ]),
        ));
        o.r.push(role(
            "default",
            "pods",
            json!([
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
            ]),
        ));
        o.rb.push(rb("default", "b1", "Role", "logs", u("logger")));
        o.rb.push(rb("default", "b2", "Role", "pods", u("podder")));
        let log = sub(res("logger", "get", "", "pods", "default", "web"), "log");
        assert!(o.allows(&log));
        assert!(!o.allows(&res("logger", "get", "", "pods", "default", "web")));
        assert!(o.allows(&res("podder", "get", "", "pods", "default", "web")));
        assert!(!o.allows(&sub(
            res("podder", "get", "", "pods", "default", "web"),
            "log"
        )));
        assert!(!o.allows(&sub(
            res("podder", "get", "", "pods", "default", "web"),
            "status"
        )));
    }

    #[test]
    fn star_slash_subresource_matches_that_subresource_of_any_resource_only() {
        let mut o = Objs::default();
        o.cr.push(crole(
            "scaler",
            json!([
                {"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["get", "patch"]}
            ]),
        ));
        o.crb.push(crb("b", "scaler", u("alice")));
        assert!(o.allows(&sub(
            res("alice", "patch", "apps", "deployments", "d", "x"),
            "scale"
        )));
        assert!(o.allows(&sub(
            res("alice", "get", "", "replicationcontrollers", "d", "x"),
            "scale"
        )));
        assert!(!o.allows(&res("alice", "get", "apps", "deployments", "d", "x")));
        assert!(!o.allows(&sub(
            res("alice", "get", "apps", "deployments", "d", "x"),
            "status"
        )));
        // "resource/*" is not a wildcard upstream.
        let mut o2 = Objs::default();
        o2.cr.push(crole(
            "r",
            json!([{"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}]),
        ));
        o2.crb.push(crb("b", "r", u("alice")));
        assert!(!o2.allows(&sub(res("alice", "get", "", "pods", "d", "x"), "log")));
    }

    #[test]
    fn wildcard_verbs_resources_and_groups_match_everything_in_their_field() {
        let mut o = Objs::default();
        o.cr.push(crole(
            "all-verbs-pods",
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]),
        ));
        o.cr.push(crole(
            "all-resources-apps",
            json!([{"apiGroups": ["apps"], "resources": ["*"], "verbs": ["get"]}]),
        ));
        o.cr.push(crole(
            "all-groups-jobs",
            json!([{"apiGroups": ["*"], "resources": ["jobs"], "verbs": ["list"]}]),
        ));
        o.crb.push(crb("b1", "all-verbs-pods", u("v")));
        o.crb.push(crb("b2", "all-resources-apps", u("r")));
        o.crb.push(crb("b3", "all-groups-jobs", u("g")));

        assert!(o.allows(&res("v", "deletecollection", "", "pods", "x", "")));
        assert!(o.allows(&res("v", "escalate-anything", "", "pods", "x", "p")));
        assert!(!o.allows(&res("v", "get", "", "services", "x", "")));
        assert!(!o.allows(&sub(res("v", "get", "", "pods", "x", "p"), "log")));

        assert!(o.allows(&res("r", "get", "apps", "deployments", "x", "d")));
        assert!(o.allows(&sub(
            res("r", "get", "apps", "deployments", "x", "d"),
            "scale"
        )));
        assert!(!o.allows(&res("r", "get", "", "pods", "x", "p")));
        assert!(!o.allows(&res("r", "list", "apps", "deployments", "x", "")));

        assert!(o.allows(&res("g", "list", "batch", "jobs", "x", "")));
        assert!(o.allows(&res("g", "list", "example.com", "jobs", "", "")));
        assert!(!o.allows(&res("g", "list", "batch", "cronjobs", "x", "")));
    }

    #[test]
    fn api_group_must_match_exactly() {
        let mut o = Objs::default();
        o.cr.push(crole(
            "d",
            json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]),
        ));
        o.crb.push(crb("b", "d", u("alice")));
        assert!(o.allows(&res("alice", "get", "apps", "deployments", "x", "d")));
        assert!(!o.allows(&res("alice", "get", "extensions", "deployments", "x", "d")));
        assert!(!o.allows(&res("alice", "get", "", "deployments", "x", "d")));
    }

    #[test]
    fn service_account_subjects_match_the_service_account_username() {
        let mut o = Objs::default();
        o.r.push(role("ci", "pod-reader", pod_reader()));
        o.rb.push(rb(
            "ci",
            "b",
            "Role",
            "pod-reader",
            json!([{"kind": "ServiceAccount", "namespace": "ci", "name": "builder"}]),
        ));
        assert!(o.allows(&res(
            "system:serviceaccount:ci:builder",
            "list",
            "",
            "pods",
            "ci",
            ""
        )));
        assert!(!o.allows(&res(
            "system:serviceaccount:ci:other",
            "list",
            "",
            "pods",
            "ci",
            ""
        )));
        assert!(!o.allows(&res(
            "system:serviceaccount:dev:builder",
            "list",
            "",
            "pods",
            "ci",
            ""
        )));
        assert!(!o.allows(&res(
            "system:serviceaccount:ci:builder:x",
            "list",
            "",
            "pods",
            "ci",
            ""
        )));
        assert!(!o.allows(&res("builder", "list", "", "pods", "ci", "")));
    }

    #[test]
    fn service_account_subject_without_namespace_means_the_binding_namespace() {
        let mut o = Objs::default();
        o.r.push(role("ci", "pod-reader", pod_reader()));
        o.rb.push(rb(
            "ci",
            "b",
            "Role",
            "pod-reader",
            json!([{"kind": "ServiceAccount", "name": "builder"}]),
        ));
        assert!(o.allows(&res(
            "system:serviceaccount:ci:builder",
            "list",
            "",
            "pods",
            "ci",
            ""
        )));
        // In a ClusterRoleBinding there is no namespace to default to.
        let mut o2 = Objs::default();
        o2.cr.push(crole("pod-reader", pod_reader()));
        o2.crb.push(crb(
            "b",
            "pod-reader",
            json!([{"kind": "ServiceAccount", "name": "builder"}]),
        ));
        assert!(!o2.allows(&res(
            "system:serviceaccount:ci:builder",
            "list",
            "",
            "pods",
            "ci",
            ""
        )));
    }

    #[test]
    fn service_account_groups_can_be_bound() {
        let mut o = Objs::default();
        o.cr.push(crole("pod-reader", pod_reader()));
        o.crb.push(crb(
            "b",
            "pod-reader",
            json!([{"kind": "Group", "apiGroup": RBAC_GROUP, "name": "system:serviceaccounts:ci"}]),
        ));
        let mut a = res("system:serviceaccount:ci:x", "list", "", "pods", "ci", "");
        a.groups = vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:ci".into(),
            "system:authenticated".into(),
        ];
        assert!(o.allows(&a));
        a.groups = vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:dev".into(),
        ];
        assert!(!o.allows(&a));
    }

    #[test]
    fn group_subjects_match_members_and_user_subjects_match_names() {
        let mut o = Objs::default();
        o.cr.push(crole("pod-reader", pod_reader()));
        o.crb.push(crb(
            "b",
            "pod-reader",
            json!([
                {"kind": "Group", "apiGroup": RBAC_GROUP, "name": "devs"},
                {"kind": "User", "apiGroup": RBAC_GROUP, "name": "carol"},
            ]),
        ));
        let mut a = res("dave", "list", "", "pods", "x", "");
        assert!(!o.allows(&a));
        a.groups.push("devs".into());
        assert!(o.allows(&a));
        assert!(o.allows(&res("carol", "list", "", "pods", "x", "")));
        // A user named like the group is not a member of it.
        assert!(!o.allows(&res("devs", "list", "", "pods", "x", "")));
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_trailing_star_prefix() {
        let mut o = Objs::default();
        o.cr.push(crole(
            "urls",
            json!([
                {"nonResourceURLs": ["/healthz", "/logs/*", "/metrics*"], "verbs": ["get"]},
                {"nonResourceURLs": ["/debug"], "verbs": ["*"]},
            ]),
        ));
        o.crb.push(crb("b", "urls", u("alice")));
        let g = |verb: &str, path: &str| o.allows(&nonres("alice", &[], verb, path));
        assert!(g("get", "/healthz"));
        assert!(!g("get", "/healthz/etcd"));
        assert!(!g("get", "/healthzz"));
        assert!(g("get", "/logs/"));
        assert!(g("get", "/logs/a/b"));
        assert!(!g("get", "/logs"));
        assert!(g("get", "/metrics"));
        assert!(g("get", "/metrics/slis"));
        assert!(!g("post", "/healthz"));
        assert!(g("post", "/debug"));
        assert!(!g("get", "/version"));
    }

    #[test]
    fn non_resource_and_resource_rules_do_not_cross_over() {
        let mut o = Objs::default();
        o.cr.push(crole(
            "mixed",
            json!([
                {"nonResourceURLs": ["*"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["*"], "verbs": ["list"]},
            ]),
        ));
        o.crb.push(crb("b", "mixed", u("alice")));
        assert!(o.allows(&nonres("alice", &[], "get", "/anything")));
        assert!(!o.allows(&res("alice", "get", "", "pods", "x", "p")));
        assert!(o.allows(&res("alice", "list", "", "pods", "x", "")));
        assert!(!o.allows(&nonres("alice", &[], "list", "/api")));
    }

    #[test]
    fn role_bindings_never_grant_non_resource_urls() {
        let mut o = Objs::default();
        o.cr.push(crole(
            "urls",
            json!([{"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        ));
        bind_to(&mut o, "default", "urls", "alice");
        assert!(!o.allows(&nonres("alice", &[], "get", "/healthz")));
    }

    #[test]
    fn missing_cluster_role_denies_with_not_found_reason() {
        let mut o = Objs::default();
        o.crb.push(crb("b", "ghost", u("alice")));
        let a = res("alice", "list", "", "pods", "default", "");
        let Decision::Deny(reason) = authorize(&a, &o.policy()) else {
            panic!("allowed")
        };
        assert_eq!(
            reason,
            r#"RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found"#
        );
        assert_eq!(
            forbidden_message(&a, &reason),
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default": RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found"#
        );
    }

    #[test]
    fn resolution_errors_aggregate_in_order_without_duplicates() {
        let mut o = Objs::default();
        o.crb.push(crb("b1", "ghost", u("alice")));
        o.crb.push(crb("b2", "ghost", u("alice")));
        o.rb.push(rb("default", "b3", "Role", "missing", u("alice")));
        o.rb.push(rb("default", "b4", "Thing", "x", u("alice")));
        // Bindings for someone else contribute nothing.
        o.crb.push(crb("b5", "other-ghost", u("bob")));
        let a = res("alice", "get", "", "pods", "default", "p");
        assert_eq!(
            authorize(&a, &o.policy()),
            Decision::Deny(
                concat!(
                    r#"RBAC: [clusterrole.rbac.authorization.k8s.io "ghost" not found, "#,
                    r#"role.rbac.authorization.k8s.io "missing" not found, "#,
                    r#"unsupported role reference kind: "Thing"]"#
                )
                .into()
            )
        );
        // Duplicates of a single error collapse to that error alone.
        let mut o2 = Objs::default();
        o2.crb.push(crb("b1", "ghost", u("alice")));
        o2.crb.push(crb("b2", "ghost", u("alice")));
        assert_eq!(
            authorize(&a, &o2.policy()),
            Decision::Deny(
                r#"RBAC: clusterrole.rbac.authorization.k8s.io "ghost" not found"#.into()
            )
        );
    }

    #[test]
    fn a_working_binding_allows_despite_other_broken_ones() {
        let mut o = Objs::default();
        o.crb.push(crb("broken", "ghost", u("alice")));
        o.cr.push(crole("pod-reader", pod_reader()));
        o.crb.push(crb("ok", "pod-reader", u("alice")));
        assert!(o.allows(&res("alice", "get", "", "pods", "x", "p")));
    }

    #[test]
    fn cluster_role_binding_to_a_role_kind_resolves_nothing() {
        let mut o = Objs::default();
        o.r.push(role("default", "pod-reader", pod_reader()));
        let mut b = crb("b", "pod-reader", u("alice"));
        b["roleRef"]["kind"] = json!("Role");
        o.crb.push(b);
        let a = res("alice", "get", "", "pods", "default", "p");
        assert_eq!(
            authorize(&a, &o.policy()),
            Decision::Deny(r#"RBAC: role.rbac.authorization.k8s.io "pod-reader" not found"#.into())
        );
    }

    #[test]
    fn malformed_objects_match_nothing_and_never_panic() {
        let mut o = Objs::default();
        o.cr.push(json!(null));
        o.cr.push(json!("x"));
        o.cr.push(json!({"metadata": {"name": "weird"}, "rules": [null, 7, {"verbs": "get"},
            {"verbs": [1, "get"], "apiGroups": [null, ""], "resources": [{}, "pods"], "resourceNames": []}]}));
        o.cr.push(json!({"metadata": {"name": "norules"}, "rules": null}));
        o.crb.push(json!([1, 2]));
        o.crb.push(json!({"subjects": "alice", "roleRef": 5}));
        o.crb.push(json!({"subjects": [null, {"kind": 3}, {"kind": "User", "name": "alice"}], "roleRef": {"kind": "ClusterRole", "name": "weird"}}));
        o.crb.push(json!({"subjects": [{"kind": "User", "name": "alice"}], "roleRef": {"kind": "ClusterRole", "name": "norules"}}));
        o.crb
            .push(json!({"subjects": [{"kind": "User", "name": "alice"}]}));
        o.r.push(json!(42));
        o.rb.push(json!({"metadata": {"namespace": ["x"]}}));
        o.rb.push(json!({"metadata": {"namespace": "default"}, "subjects": [{"kind": "User", "name": "alice"}], "roleRef": null}));
        // The well-formed parts of "weird" still work.
        assert!(o.allows(&res("alice", "get", "", "pods", "default", "p")));
        assert!(!o.allows(&res("alice", "list", "", "services", "default", "")));
        assert!(!o.allows(&nonres("alice", &[], "get", "/")));
        assert!(!o.allows(&Attributes::default()));
        let _ = forbidden_message(&Attributes::default(), "");
    }

    #[test]
    fn bootstrap_discovery_allows_api_discovery_for_authenticated_users() {
        let o = bootstrap();
        let authed = ["system:authenticated"];
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
            "/healthz",
            "/readyz",
            "/livez",
        ] {
            assert!(o.allows(&nonres("alice", &authed, "get", path)), "{path}");
        }
        assert!(!o.allows(&nonres("alice", &authed, "post", "/apis")));
        assert!(!o.allows(&nonres("alice", &authed, "get", "/metrics")));
        assert!(!o.allows(&nonres("alice", &authed, "get", "/debug/pprof")));
        // Unauthenticated users only see public info.
        let anon = ["system:unauthenticated"];
        assert!(!o.allows(&nonres("system:anonymous", &anon, "get", "/apis")));
        assert!(!o.allows(&nonres("system:anonymous", &anon, "get", "/api")));
        for path in ["/healthz", "/livez", "/readyz", "/version", "/version/"] {
            assert!(
                o.allows(&nonres("system:anonymous", &anon, "get", path)),
                "{path}"
            );
        }
    }

    #[test]
    fn bootstrap_basic_user_can_review_itself_but_read_nothing() {
        let o = bootstrap();
        let a = res(
            "alice",
            "create",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "",
            "",
        );
        assert!(o.allows(&a));
        assert!(o.allows(&res(
            "alice",
            "create",
            "authentication.k8s.io",
            "selfsubjectreviews",
            "",
            ""
        )));
        assert!(!o.allows(&res("alice", "list", "", "pods", "default", "")));
        assert!(!o.allows(&res("alice", "list", "", "namespaces", "", "")));
    }

    #[test]
    fn bootstrap_view_cannot_read_secrets_but_edit_can() {
        let mut o = bootstrap();
        bind_to(&mut o, "team", "view", "viewer");
        bind_to(&mut o, "team", "edit", "editor");
        for (who, ok) in [("viewer", false), ("editor", true)] {
            for verb in ["get", "list", "watch"] {
                let name = if verb == "get" { "s" } else { "" };
                assert_eq!(
                    o.allows(&res(who, verb, "", "secrets", "team", name)),
                    ok,
                    "{who} {verb}"
                );
            }
        }
        // Both read ordinary objects.
        for who in ["viewer", "editor"] {
            assert!(o.allows(&res(who, "list", "", "pods", "team", "")));
            assert!(o.allows(&sub(res(who, "get", "", "pods", "team", "p"), "log")));
            assert!(o.allows(&res(who, "get", "", "namespaces", "team", "team")));
            assert!(o.allows(&sub(
                res(who, "get", "apps", "deployments", "team", "d"),
                "scale"
            )));
            assert!(o.allows(&sub(
                res(who, "get", "apps", "deployments", "team", "d"),
                "status"
            )));
            assert!(o.allows(&res(
                who,
                "list",
                "discovery.k8s.io",
                "endpointslices",
                "team",
                ""
            )));
            assert!(!o.allows(&res(who, "list", "", "pods", "elsewhere", "")));
        }
        // Only edit writes, execs and mints tokens.
        assert!(!o.allows(&res("viewer", "create", "", "pods", "team", "")));
        assert!(o.allows(&res("editor", "create", "", "pods", "team", "")));
        assert!(!o.allows(&sub(
            res("viewer", "create", "", "pods", "team", "p"),
            "exec"
        )));
        assert!(o.allows(&sub(
            res("editor", "create", "", "pods", "team", "p"),
            "exec"
        )));
        assert!(o.allows(&sub(
            res("editor", "create", "", "pods", "team", "p"),
            "eviction"
        )));
        assert!(o.allows(&sub(
            res("editor", "create", "", "serviceaccounts", "team", "sa"),
            "token"
        )));
        assert!(o.allows(&sub(
            res("editor", "patch", "apps", "deployments", "team", "d"),
            "scale"
        )));
        assert!(o.allows(&res("editor", "delete", "batch", "jobs", "team", "j")));
        assert!(o.allows(&res(
            "editor",
            "update",
            "networking.k8s.io",
            "ingresses",
            "team",
            "i"
        )));
        // Status and quota are the system's, RBAC is admin's, leases are nobody's here.
        assert!(!o.allows(&sub(
            res("editor", "update", "", "pods", "team", "p"),
            "status"
        )));
        assert!(!o.allows(&res("editor", "update", "", "resourcequotas", "team", "q")));
        assert!(!o.allows(&res("editor", "create", "", "endpoints", "team", "")));
        assert!(!o.allows(&res(
            "editor",
            "create",
            RBAC_GROUP,
            "rolebindings",
            "team",
            ""
        )));
        assert!(!o.allows(&res(
            "editor",
            "update",
            "coordination.k8s.io",
            "leases",
            "team",
            "l"
        )));
    }

    #[test]
    fn bootstrap_admin_manages_roles_and_everything_edit_does() {
        let mut o = bootstrap();
        bind_to(&mut o, "team", "admin", "boss");
        assert!(o.allows(&res(
            "boss",
            "create",
            RBAC_GROUP,
            "rolebindings",
            "team",
            ""
        )));
        assert!(o.allows(&res("boss", "delete", RBAC_GROUP, "roles", "team", "r")));
        assert!(o.allows(&res(
            "boss",
            "create",
            "authorization.k8s.io",
            "localsubjectaccessreviews",
            "team",
            ""
        )));
        assert!(o.allows(&res("boss", "get", "", "secrets", "team", "s")));
        assert!(o.allows(&res("boss", "list", "", "events", "team", "")));
        assert!(o.allows(&res("boss", "list", "", "limitranges", "team", "")));
        assert!(!o.allows(&res("boss", "create", RBAC_GROUP, "clusterroles", "", "")));
        assert!(!o.allows(&res("boss", "delete", "", "namespaces", "team", "team")));
    }

    #[test]
    fn bootstrap_cluster_admin_is_bound_to_system_masters() {
        let o = bootstrap();
        let mut a = res("root", "deletecollection", "apps", "deployments", "x", "");
        assert!(!o.allows(&a));
        a.groups.push("system:masters".into());
        assert!(o.allows(&a));
        assert!(o.allows(&nonres(
            "root",
            &["system:masters"],
            "post",
            "/anything/at/all"
        )));
    }

    #[test]
    fn bootstrap_node_role_covers_what_a_kubelet_needs() {
        let o = bootstrap();
        let node = |verb: &str, group: &str, resource: &str, ns: &str, name: &str| {
            let mut a = res("system:node:n1", verb, group, resource, ns, name);
            a.groups.push("system:nodes".into());
            a
        };
        assert!(o.allows(&node("create", "", "nodes", "", "")));
        assert!(o.allows(&sub(node("patch", "", "nodes", "", "n1"), "status")));
        assert!(o.allows(&node("watch", "", "pods", "", "")));
        assert!(o.allows(&sub(node("patch", "", "pods", "x", "p"), "status")));
        assert!(o.allows(&node("create", "", "events", "x", "")));
        assert!(o.allows(&node(
            "update",
            "coordination.k8s.io",
            "leases",
            "kube-node-lease",
            "n1"
        )));
        assert!(o.allows(&node("get", "", "configmaps", "x", "c")));
        assert!(o.allows(&node("get", "", "secrets", "x", "s")));
        assert!(o.allows(&sub(
            node("create", "", "serviceaccounts", "x", "sa"),
            "token"
        )));
        assert!(!o.allows(&node("delete", "", "namespaces", "", "x")));
        assert!(!o.allows(&node("create", RBAC_GROUP, "clusterrolebindings", "", "")));
    }

    #[test]
    fn bootstrap_scheduler_and_controller_manager_users_are_bound() {
        let o = bootstrap();
        let s = |verb: &str, group: &str, resource: &str, ns: &str, name: &str| {
            res("system:kube-scheduler", verb, group, resource, ns, name)
        };
        assert!(o.allows(&s("watch", "", "pods", "", "")));
        assert!(o.allows(&s("list", "", "nodes", "", "")));
        assert!(o.allows(&sub(s("create", "", "pods", "x", "p"), "binding")));
        assert!(o.allows(&sub(s("patch", "", "pods", "x", "p"), "status")));
        assert!(o.allows(&s("create", "events.k8s.io", "events", "x", "")));
        assert!(o.allows(&s(
            "update",
            "coordination.k8s.io",
            "leases",
            "kube-system",
            "kube-scheduler"
        )));
        assert!(!o.allows(&s(
            "update",
            "coordination.k8s.io",
            "leases",
            "kube-system",
            "other"
        )));
        assert!(o.allows(&s("patch", "", "persistentvolumeclaims", "x", "c")));
        assert!(!o.allows(&s("create", "", "pods", "x", "")));

        let c = |verb: &str, group: &str, resource: &str, ns: &str, name: &str| {
            res(
                "system:kube-controller-manager",
                verb,
                group,
                resource,
                ns,
                name,
            )
        };
        assert!(o.allows(&c("create", "", "pods", "x", "")));
        assert!(o.allows(&c("create", "apps", "replicasets", "x", "")));
        assert!(o.allows(&sub(c("update", "apps", "deployments", "x", "d"), "status")));
        assert!(o.allows(&c("create", "discovery.k8s.io", "endpointslices", "x", "")));
        assert!(o.allows(&c("deletecollection", "", "configmaps", "x", "")));
        assert!(o.allows(&c("patch", "example.com", "widgets", "x", "w")));
        assert!(o.allows(&sub(c("update", "", "namespaces", "", "x"), "finalize")));
        assert!(!o.allows(&c("impersonate", "", "users", "", "root")));
        assert!(!o.allows(&nonres(
            "system:kube-controller-manager",
            &[],
            "get",
            "/metrics"
        )));
    }

    #[test]
    fn bootstrap_objects_are_well_formed_and_bindings_resolve() {
        let all = bootstrap_policy();
        let mut names = Vec::new();
        for v in &all {
            assert_eq!(v["apiVersion"], "rbac.authorization.k8s.io/v1");
            assert_eq!(
                v["metadata"]["labels"]["kubernetes.io/bootstrapping"],
                "rbac-defaults"
            );
            assert_eq!(
                v["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
                "true"
            );
            let key = (
                str_at(v, &["kind"]).to_string(),
                str_at(v, &["metadata", "name"]).to_string(),
            );
            assert!(!names.contains(&key), "duplicate {key:?}");
            names.push(key);
        }
        let role_names: Vec<&str> = all
            .iter()
            .filter(|v| v["kind"] == "ClusterRole")
            .map(|v| str_at(v, &["metadata", "name"]))
            .collect();
        for required in [
            "cluster-admin",
            "admin",
            "edit",
            "view",
            "system:discovery",
            "system:basic-user",
            "system:public-info-viewer",
            "system:node",
            "system:kube-scheduler",
            "system:kube-controller-manager",
        ] {
            assert!(role_names.contains(&required), "{required}");
        }
        for b in all.iter().filter(|v| v["kind"] == "ClusterRoleBinding") {
            assert_eq!(b["roleRef"]["kind"], "ClusterRole");
            assert!(role_names.contains(&str_at(b, &["roleRef", "name"])), "{b}");
            assert!(b["subjects"].as_array().is_some_and(|s| !s.is_empty()));
        }
        for r in all.iter().filter(|v| v["kind"] == "ClusterRole") {
            for rule in r["rules"].as_array().into_iter().flatten() {
                assert!(strs(rule, "verbs").next().is_some(), "{rule}");
            }
        }
        let edit = all
            .iter()
            .find(|v| v["metadata"]["name"] == "edit")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"],
            "true"
        );
        assert_eq!(
            edit["aggregationRule"]["clusterRoleSelectors"][0]["matchLabels"]
                ["rbac.authorization.k8s.io/aggregate-to-edit"],
            "true"
        );
    }

    #[test]
    fn forbidden_message_for_cluster_scoped_request() {
        let a = res("alice", "list", "", "nodes", "", "");
        assert_eq!(
            forbidden_message(&a, ""),
            r#"nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#
        );
    }

    #[test]
    fn forbidden_message_for_named_request() {
        let a = res("alice", "get", "", "pods", "default", "web-1");
        assert_eq!(
            forbidden_message(&a, ""),
            r#"pods "web-1" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "default""#
        );
    }

    #[test]
    fn forbidden_message_for_subresource_names_resource_slash_subresource() {
        let a = sub(
            res("alice", "patch", "apps", "deployments", "default", "x"),
            "scale",
        );
        assert_eq!(
            forbidden_message(&a, ""),
            r#"deployments.apps "x" is forbidden: User "alice" cannot patch resource "deployments/scale" in API group "apps" in the namespace "default""#
        );
    }

    #[test]
    fn forbidden_message_for_non_resource_request() {
        let a = nonres("alice", &["system:authenticated"], "get", "/apis");
        assert_eq!(
            forbidden_message(&a, ""),
            r#"forbidden: User "alice" cannot get path "/apis""#
        );
        // Stale resource fields do not leak into a non-resource message.
        let mut b = a.clone();
        b.resource = "pods".into();
        assert_eq!(
            forbidden_message(&b, ""),
            r#"forbidden: User "alice" cannot get path "/apis""#
        );
    }

    #[test]
    fn forbidden_message_appends_reason_and_quotes_like_go() {
        let a = res(
            "system:serviceaccount:ns:sa",
            "get",
            "",
            "secrets",
            "ns",
            "x",
        );
        assert_eq!(
            forbidden_message(&a, "RBAC: boom"),
            r#"secrets "x" is forbidden: User "system:serviceaccount:ns:sa" cannot get resource "secrets" in API group "" in the namespace "ns": RBAC: boom"#
        );
        let weird = nonres("a\"b\\c\n", &[], "get", "/x<y>&z");
        assert_eq!(
            forbidden_message(&weird, ""),
            r#"forbidden: User "a\"b\\c\n" cannot get path "/x&lt;y&gt;&amp;z""#
        );
        assert_eq!(go_quote("\u{1}\u{7f}é\u{85}"), "\"\\x01\\x7fé\\u0085\"");
    }
}
