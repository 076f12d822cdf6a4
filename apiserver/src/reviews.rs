//! Questions asked through the API and answered, never stored: access reviews (`kubectl auth
//! can-i`), SelfSubjectReview (`kubectl auth whoami`) and TokenReview.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::rbac::{Attributes, Decision};
use crate::request::{decode_body, Reply, Request, User};
use crate::rest::Target;
use crate::Api;

fn attributes(user: &User, spec: &Value, namespace_override: Option<&str>) -> ApiResult<Attributes> {
    let ra = &spec["resourceAttributes"];
    let nra = &spec["nonResourceAttributes"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    if ra.is_object() {
        Ok(Attributes {
            user: user.name.clone(),
            groups: user.groups.clone(),
            verb: s(&ra["verb"]),
            resource_request: true,
            api_group: s(&ra["group"]),
            resource: s(&ra["resource"]),
            subresource: s(&ra["subresource"]),
            namespace: namespace_override.map(str::to_string).unwrap_or_else(|| s(&ra["namespace"])),
            name: s(&ra["name"]),
            path: String::new(),
        })
    } else if nra.is_object() {
        Ok(Attributes { user: user.name.clone(), groups: user.groups.clone(), verb: s(&nra["verb"]), resource_request: false, path: s(&nra["path"]), ..Default::default() })
    } else {
        Err(ApiError::invalid("SubjectAccessReview", "authorization.k8s.io", "", vec![crate::error::Cause::required("spec.resourceAttributes")]))
    }
}

impl Api {
    pub async fn review(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let mut body = decode_body(req)?;
        if !body.is_object() {
            return Err(ApiError::BadRequest(format!("the body of the request is not a {} object", t.res.kind)));
        }
        body["apiVersion"] = json!(t.res.api_version());
        body["kind"] = json!(t.res.kind);
        match t.res.kind.as_str() {
            "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
                let user = if t.res.kind == "SubjectAccessReview" || t.res.kind == "LocalSubjectAccessReview" {
                    let spec = &body["spec"];
                    let mut groups: Vec<String> = spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(str::to_string)).collect();
                    let name = spec["user"].as_str().unwrap_or("").to_string();
                    if !name.is_empty() && !groups.iter().any(|g| g == "system:authenticated") {
                        groups.push("system:authenticated".into());
                    }
                    User { name, groups }
                } else {
                    req.user.clone()
                };
                let ns = if t.res.kind == "LocalSubjectAccessReview" { t.ns.as_deref() } else { None };
                let attrs = attributes(&user, &body["spec"], ns)?;
                let status = match crate::server::decide(self, &attrs).await? {
                    Decision::Allow => json!({"allowed": true, "reason": if user.groups.iter().any(|g| g == "system:masters") { "system:masters" } else { "RBAC: allowed" }}),
                    Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
                };
                body["status"] = status;
            }
            "SelfSubjectReview" => {
                body["status"] = json!({"userInfo": {"username": req.user.name, "groups": req.user.groups}});
            }
            "TokenReview" => {
                let token = body["spec"]["token"].as_str().unwrap_or("").to_string();
                let wanted: Vec<String> = match body["spec"]["audiences"].as_array() {
                    Some(a) if !a.is_empty() => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                    _ => vec![crate::tokens::ISSUER.to_string()],
                };
                let user = match self.cfg.tokens.get(&token) {
                    Some(u) => Some((u.clone(), wanted.clone())),
                    None => self.authenticate_token_for(&token, &wanted).await,
                };
                body["status"] = match user {
                    Some((u, aud)) => json!({"authenticated": true, "user": {"username": u.name, "groups": u.groups}, "audiences": aud}),
                    None => json!({"authenticated": false, "error": "invalid bearer token, or not for the requested audiences"}),
                };
            }
            _ => return Err(ApiError::MethodNotAllowed),
        }
        if body["metadata"].is_null() {
            body["metadata"] = json!({});
        }
        Ok(Reply::code(201, body))
    }
}
