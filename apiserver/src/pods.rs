//! Pod subresources that act rather than store: binding (the scheduler's) and eviction (drain's).

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::request::{decode_body, Reply, Request};
use crate::rest::{now_rfc3339, Target};
use crate::selectors::LabelSelector;
use crate::store::{collection_range, Freshness};
use crate::Api;

impl Api {
    /// POST pods/NAME/binding: sets spec.nodeName once, with the PodScheduled condition.
    pub async fn bind(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let body = decode_body(req)?;
        let node = body["target"]["name"].as_str().unwrap_or("").to_string();
        if node.is_empty() {
            return Err(ApiError::invalid("Binding", "", t.name.as_deref().unwrap_or(""), vec![crate::error::Cause::required("target.name")]));
        }
        let pod_t = Target { sub: None, ..t.clone() };
        let name = t.name.clone().unwrap_or_default();
        let precondition_uid = body["metadata"]["uid"].as_str().map(str::to_string);
        let dry = req.query.get("dryRun") == Some("All");
        self.guaranteed_update_pinned(req, &pod_t, Some(crate::rest::BINDING), dry, None, |old| {
            if let Some(uid) = &precondition_uid {
                if old["metadata"]["uid"].as_str() != Some(uid.as_str()) {
                    return Err(ApiError::Conflict { gr: t.res.gr(), name: name.clone(), reason: "the object has been modified; please apply your changes to the latest version and try again".into() });
                }
            }
            if old["metadata"].get("deletionTimestamp").is_some() {
                return Err(ApiError::Conflict { gr: t.res.gr(), name: name.clone(), reason: "pod is being deleted, cannot be assigned to a host".into() });
            }
            match old["spec"]["nodeName"].as_str() {
                Some(n) if !n.is_empty() => {
                    return Err(ApiError::Conflict { gr: t.res.gr(), name: name.clone(), reason: format!("pod {name} is already assigned to node \"{n}\"") });
                }
                _ => {}
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            let mut conds: Vec<Value> = old["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conds.retain(|c| c["type"] != "PodScheduled");
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
            new["status"]["conditions"] = json!(conds);
            Ok(new)
        })
        .await?;
        Ok(Reply::code(201, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})))
    }

    /// Takes one allowed disruption from every PodDisruptionBudget covering the pod, each with a
    /// compare-and-swap on the budget, so that concurrent evictions cannot both spend the last
    /// one (429 when a budget has none left).
    async fn take_disruption(&self, t: &Target, pod: &Value, dry: bool) -> ApiResult<()> {
        let cat = self.catalog.get();
        let Some(pdbs) = cat.lookup("policy", "v1", "poddisruptionbudgets") else { return Ok(()) };
        let (start, end) = collection_range(&pdbs, t.ns.as_deref());
        let labels = pod["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        for _ in 0..16 {
            let page = self.store.list(&start, &end, Freshness::Latest, 0, &|_| true).await?;
            let mut raced = false;
            for (pdb, kv) in page.items {
                let sel = match LabelSelector::from_json(&pdb["spec"]["selector"]) {
                    Ok(s) if !pdb["spec"]["selector"].is_null() => s,
                    _ => continue,
                };
                if !sel.matches(&labels) {
                    continue;
                }
                let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                if allowed <= 0 {
                    let name = pdb["metadata"]["name"].as_str().unwrap_or("");
                    return Err(ApiError::TooManyRequests(format!(
                        "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {name} needs {} healthy pods and has {} currently",
                        pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                        pdb["status"]["currentHealthy"].as_i64().unwrap_or(0)
                    )));
                }
                if dry {
                    continue;
                }
                let mut spent = pdb.clone();
                if !spent["status"].is_object() {
                    spent["status"] = json!({});
                }
                spent["status"]["disruptionsAllowed"] = json!(allowed - 1);
                if !spent["status"]["disruptedPods"].is_object() {
                    spent["status"]["disruptedPods"] = json!({});
                }
                spent["status"]["disruptedPods"][&pod_name] = json!(now_rfc3339());
                if self.store.update(&kv.key, kv.mod_revision, &spent).await?.is_none() {
                    raced = true;
                    break;
                }
            }
            if !raced {
                return Ok(());
            }
        }
        Err(ApiError::TooManyRequests("too many concurrent evictions against the same disruption budget; retry".into()))
    }

    /// POST pods/NAME/eviction: a graceful delete unless a PodDisruptionBudget forbids it (429).
    pub async fn evict(&self, req: &Request, t: &Target) -> ApiResult<Reply> {
        let body = decode_body(req)?;
        let pod_t = Target { sub: None, ..t.clone() };
        let (pod, _) = self.store.get(&pod_t.key(), Freshness::Latest).await?.ok_or_else(|| ApiError::NotFound { gr: t.res.gr(), name: t.name.clone().unwrap_or_default() })?;
        let terminal = matches!(pod["status"]["phase"].as_str(), Some("Succeeded") | Some("Failed"));
        let opts = &body["deleteOptions"];
        let dry = req.query.get("dryRun") == Some("All") || opts["dryRun"].as_array().map(|a| !a.is_empty()).unwrap_or(false);
        if !terminal && pod["metadata"].get("deletionTimestamp").is_none() {
            self.take_disruption(t, &pod, dry).await?;
        }
        let grace = opts["gracePeriodSeconds"].as_i64();
        let uid = opts["preconditions"]["uid"].as_str();
        let rv = opts["preconditions"]["resourceVersion"].as_str();
        self.delete_object(&pod_t, grace, None, uid, rv, dry).await?;
        Ok(Reply::code(201, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})))
    }
}
