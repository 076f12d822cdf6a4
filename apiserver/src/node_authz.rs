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
        if !a.resource_request || READS.contains(&a.verb.as_str()) && a.resource != "secrets" {
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
                let pod = self.store.get(&object_key(&pods, Some(&a.namespace), &a.name), Freshness::Latest).await?;
                match pod {
                    Some((p, _)) if p["spec"]["nodeName"].as_str() == Some(node) => Ok(()),
                    Some(_) => Err(deny(a, "can only modify pods bound to it")),
                    None => Ok(()),
                }
            }
            ("", "secrets") if a.verb == "get" => Ok(()),
            ("", "secrets") => Err(deny(a, "cannot list secrets")),
            _ => Ok(()),
        }
    }
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
    fn node_users_are_recognised_only_with_the_nodes_group() {
        assert_eq!(node_name("system:node:n1", &["system:nodes".into()]).as_deref(), Some("n1"));
        assert_eq!(node_name("system:node:n1", &[]), None);
        assert_eq!(node_name("alice", &["system:nodes".into()]), None);
        assert_eq!(node_name("system:node:", &["system:nodes".into()]), None);
    }
}
