//! The node authorizer: a node daemon (user `system:node:NAME`, group `system:nodes`) may change
//! only its own Node, its own heartbeat Lease and the pods bound to it. It runs before RBAC,
//! which then decides everything it lets through (the bootstrap `system:node` role).

use crate::error::{ApiError, ApiResult, GroupResource};
use crate::rbac::Attributes;
use crate::store::{object_key, Freshness};
use crate::Api;

const READS: &[&str] = &["get", "list", "watch"];

/// The node a request comes from, if it comes from one.
pub fn node_name(user: &str, groups: &[String]) -> Option<String> {
    let name = user.strip_prefix("system:node:")?;
    (!name.is_empty() && groups.iter().any(|g| g == "system:nodes")).then(|| name.to_string())
}

fn deny(a: &Attributes, why: &str) -> ApiError {
    let gr = GroupResource { group: a.api_group.clone(), resource: a.resource.clone() };
    ApiError::Forbidden { message: format!("{}: node '{}' {why}", crate::rbac::forbidden_message(a, ""), a.user.trim_start_matches("system:node:")), gr, name: a.name.clone() }
}

impl Api {
    /// Ok(()) lets RBAC decide; an error refuses whatever RBAC would say.
    pub async fn authorize_node(&self, node: &str, a: &Attributes) -> ApiResult<()> {
        let guarded_read = matches!(a.resource.as_str(), "secrets" | "configmaps" | "persistentvolumeclaims");
        if !a.resource_request || READS.contains(&a.verb.as_str()) && !guarded_read {
            return Ok(());
        }
        match (a.api_group.as_str(), a.resource.as_str()) {
            ("", "nodes") => {
                if a.name == node || (a.verb == "create" && a.name.is_empty()) {
                    Ok(())
                } else {
                    Err(deny(a, "cannot modify node"))
                }
            }
            ("coordination.k8s.io", "leases") => {
                if a.namespace == "kube-node-lease" && (a.name == node || (a.verb == "create" && a.name.is_empty())) {
                    Ok(())
                } else {
                    Err(deny(a, "can only modify its own lease in kube-node-lease"))
                }
            }
            ("", "pods") => {
                if a.verb == "create" && a.subresource.is_empty() {
                    // Mirror pods: the body is checked by nodeName at create time upstream; we
                    // let RBAC decide and require the binding below for every other write.
                    return Ok(());
                }
                let cat = self.catalog.get();
                let pods = cat.lookup("", "v1", "pods").ok_or(ApiError::NoRoute)?;
                let pod = self.store.get_shared(&object_key(&pods, Some(&a.namespace), &a.name), Freshness::Latest).await?;
                match pod {
                    Some((p, _)) if p["spec"]["nodeName"].as_str() == Some(node) => Ok(()),
                    Some(_) => Err(deny(a, "can only modify pods bound to it")),
                    None => Ok(()),
                }
            }
            ("", "secrets") | ("", "configmaps") | ("", "persistentvolumeclaims") if a.verb == "get" => {
                let kind = a.resource.as_str();
                let used = self.pods_on_node(node, &a.namespace).await?.iter().any(|p| references(p, kind).iter().any(|n| n == &a.name));
                if used {
                    Ok(())
                } else {
                    Err(deny(a, &format!("has no relationship with this {}", kind.trim_end_matches('s'))))
                }
            }
            ("", "secrets") | ("", "configmaps") | ("", "persistentvolumeclaims") if READS.contains(&a.verb.as_str()) => Err(deny(a, &format!("cannot {} {}", a.verb, a.resource))),
            ("", "serviceaccounts") if a.subresource == "token" => {
                let used = self.pods_on_node(node, &a.namespace).await?.iter().any(|p| p["spec"]["serviceAccountName"].as_str().unwrap_or("default") == a.name);
                if used {
                    Ok(())
                } else {
                    Err(deny(a, "can only create tokens for service accounts of its own pods"))
                }
            }
            _ => Ok(()),
        }
    }
}

impl Api {
    /// Pods in `ns` bound to `node`.
    async fn pods_on_node(&self, node: &str, ns: &str) -> ApiResult<Vec<serde_json::Value>> {
        let cat = self.catalog.get();
        let pods = cat.lookup("", "v1", "pods").ok_or(ApiError::NoRoute)?;
        let (start, end) = crate::store::collection_range(&pods, Some(ns));
        let page = self.store.list(&start, &end, Freshness::Any, 0, &|p| p["spec"]["nodeName"].as_str() == Some(node)).await?;
        Ok(page.items.into_iter().map(|(v, _)| v).collect())
    }
}

/// Names of the objects of `kind` ("secrets", "configmaps", "persistentvolumeclaims") a pod
/// uses: volumes (also projected), env and envFrom, image pull secrets.
pub fn references(pod: &serde_json::Value, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: &serde_json::Value| {
        if let Some(n) = v.as_str() {
            out.push(n.to_string());
        }
    };
    let spec = &pod["spec"];
    for v in spec["volumes"].as_array().into_iter().flatten() {
        match kind {
            "secrets" => push(&v["secret"]["secretName"]),
            "configmaps" => push(&v["configMap"]["name"]),
            _ => push(&v["persistentVolumeClaim"]["claimName"]),
        }
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            match kind {
                "secrets" => push(&src["secret"]["name"]),
                "configmaps" => push(&src["configMap"]["name"]),
                _ => {}
            }
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                match kind {
                    "secrets" => push(&e["valueFrom"]["secretKeyRef"]["name"]),
                    "configmaps" => push(&e["valueFrom"]["configMapKeyRef"]["name"]),
                    _ => {}
                }
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                match kind {
                    "secrets" => push(&e["secretRef"]["name"]),
                    "configmaps" => push(&e["configMapRef"]["name"]),
                    _ => {}
                }
            }
        }
    }
    if kind == "secrets" {
        for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
            push(&s["name"]);
        }
    }
    out
}

/// NodeRestriction at create time, where the authorizer has no name to look at: a node may
/// create only its own Node and Lease, and only pods bound to itself (mirror pods).
pub fn admit_node_create(user: &crate::request::User, res: &crate::catalog::ResourceDef, obj: &serde_json::Value) -> ApiResult<()> {
    let Some(node) = node_name(&user.name, &user.groups) else { return Ok(()) };
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let ok = match (res.group.as_str(), res.kind.as_str()) {
        ("", "Node") => name == node,
        ("coordination.k8s.io", "Lease") => name == node && obj["metadata"]["namespace"].as_str() == Some("kube-node-lease"),
        ("", "Pod") => obj["spec"]["nodeName"].as_str() == Some(node.as_str()),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            message: format!("{} \"{name}\" is forbidden: node \"{node}\" can only create its own {}", res.gr(), res.kind),
            gr: res.gr(),
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_references_its_volumes_env_and_pull_secrets() {
        let pod = serde_json::json!({"spec": {
            "volumes": [{"secret": {"secretName": "s1"}}, {"configMap": {"name": "c1"}}, {"projected": {"sources": [{"secret": {"name": "s2"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}}, {"persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [{"env": [{"valueFrom": {"secretKeyRef": {"name": "s3"}}}], "envFrom": [{"configMapRef": {"name": "c2"}}]}],
            "imagePullSecrets": [{"name": "reg"}]
        }});
        assert_eq!(references(&pod, "secrets"), ["s1", "s2", "s3", "reg"]);
        assert_eq!(references(&pod, "configmaps"), ["c1", "kube-root-ca.crt", "c2"]);
        assert_eq!(references(&pod, "persistentvolumeclaims"), ["data"]);
    }

    #[test]
    fn node_users_are_recognised_only_with_the_nodes_group() {
        assert_eq!(node_name("system:node:n1", &["system:nodes".into()]).as_deref(), Some("n1"));
        assert_eq!(node_name("system:node:n1", &[]), None);
        assert_eq!(node_name("alice", &["system:nodes".into()]), None);
        assert_eq!(node_name("system:node:", &["system:nodes".into()]), None);
    }
}
