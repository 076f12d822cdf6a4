//! Service ClusterIP and NodePort allocation. Each allocated address or port is a store key
//! created in the same transaction as the Service (and deleted with it), so two Services can
//! never commit the same one, whichever replica they were created on.

use std::net::Ipv4Addr;

use rand::Rng;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, Cause};
use crate::rest::Target;
use crate::Api;

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// The Service ClusterIP range and NodePort range.
#[derive(Clone, Debug)]
pub struct Ranges {
    pub net: Ipv4Addr,
    pub prefix_len: u8,
    pub node_ports: (u16, u16),
}

impl Default for Ranges {
    fn default() -> Ranges {
        Ranges { net: Ipv4Addr::new(10, 96, 0, 0), prefix_len: 16, node_ports: (30000, 32767) }
    }
}

impl Ranges {
    pub fn parse_cidr(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
        let (ip, len) = s.split_once('/').ok_or_else(|| anyhow::anyhow!("{s:?} is not a CIDR like 10.96.0.0/16"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| anyhow::anyhow!("{s:?} is not a CIDR like 10.96.0.0/16"))?;
        let len: u8 = len.parse().ok().filter(|l| (8..=30).contains(l)).ok_or_else(|| anyhow::anyhow!("{s:?}: prefix length must be 8..30"))?;
        let mask = u32::MAX << (32 - len);
        Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
    }
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix_len as u32)
    }
    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix_len as u32);
        u32::from(ip) & mask == u32::from(self.net)
    }
    /// The first usable address: the `kubernetes` Service's.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }
}

fn invalid(t: &Target, field: &str, value: &str, detail: &str) -> ApiError {
    ApiError::invalid(&t.res.kind, &t.res.group, t.name.as_deref().unwrap_or(""), vec![Cause::invalid(field, value, detail)])
}

pub async fn allocate_service(api: &Api, t: &Target, svc: &mut Value) -> ApiResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let ranges = &api.cfg.ranges;
    let ty = svc["spec"]["type"].as_str().unwrap_or("ClusterIP").to_string();
    let owner = format!("{}/{}", t.ns.as_deref().unwrap_or(""), t.name.as_deref().unwrap_or(""));
    let mut extra = Vec::new();
    if ty != "ExternalName" {
        let requested = svc["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
        if requested != "None" {
            let used: std::collections::HashSet<Vec<u8>> = api.store.keys(IP_PREFIX.as_bytes()).await?.into_iter().collect();
            let ip = if requested.is_empty() {
                let mut r = rand::rng();
                let size = ranges.size();
                let mut found = None;
                // Random probes first (cheap when sparse), then a scan so a nearly full range still works.
                for _ in 0..64 {
                    let off = r.random_range(2..size - 1);
                    let ip = Ipv4Addr::from(u32::from(ranges.net) + off);
                    if !used.contains(format!("{IP_PREFIX}{ip}").as_bytes()) {
                        found = Some(ip);
                        break;
                    }
                }
                if found.is_none() {
                    found = (2..size - 1).map(|off| Ipv4Addr::from(u32::from(ranges.net) + off)).find(|ip| !used.contains(format!("{IP_PREFIX}{ip}").as_bytes()));
                }
                found.ok_or_else(|| ApiError::Internal("failed to allocate a serviceIP: range is full".into()))?
            } else {
                let ip: Ipv4Addr = requested.parse().map_err(|_| invalid(t, "spec.clusterIPs", &requested, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))?;
                if !ranges.contains(ip) {
                    return Err(invalid(t, "spec.clusterIPs", &requested, &format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}", ranges.net, ranges.prefix_len)));
                }
                if used.contains(format!("{IP_PREFIX}{ip}").as_bytes()) {
                    return Err(invalid(t, "spec.clusterIPs", &requested, &format!("failed to allocate IP {ip}: provided IP is already allocated")));
                }
                ip
            };
            svc["spec"]["clusterIP"] = json!(ip.to_string());
            svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
            extra.push((format!("{IP_PREFIX}{ip}").into_bytes(), owner.clone().into_bytes()));
        } else {
            svc["spec"]["clusterIPs"] = json!(["None"]);
        }
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let used: std::collections::HashSet<Vec<u8>> = api.store.keys(PORT_PREFIX.as_bytes()).await?.into_iter().collect();
        let mut taken: Vec<u16> = Vec::new();
        let (lo, hi) = ranges.node_ports;
        if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
            for (i, p) in ports.iter_mut().enumerate() {
                let proto = p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
                let port = match p["nodePort"].as_u64() {
                    Some(n) if n != 0 => {
                        let n = n as u16;
                        if n < lo || n > hi {
                            return Err(invalid(t, &format!("spec.ports[{i}].nodePort"), &n.to_string(), &format!("provided port is not in the valid range. The range of valid ports is {lo}-{hi}")));
                        }
                        if used.contains(format!("{PORT_PREFIX}{proto}/{n}").as_bytes()) || taken.contains(&n) {
                            return Err(invalid(t, &format!("spec.ports[{i}].nodePort"), &n.to_string(), "provided port is already allocated"));
                        }
                        n
                    }
                    _ => {
                        let mut r = rand::rng();
                        let mut pick = None;
                        for _ in 0..64 {
                            let n = r.random_range(lo..=hi);
                            if !used.contains(format!("{PORT_PREFIX}{proto}/{n}").as_bytes()) && !taken.contains(&n) {
                                pick = Some(n);
                                break;
                            }
                        }
                        let pick = pick.or_else(|| (lo..=hi).find(|n| !used.contains(format!("{PORT_PREFIX}{proto}/{n}").as_bytes()) && !taken.contains(n)));
                        pick.ok_or_else(|| ApiError::Internal("failed to allocate a nodePort: range is full".into()))?
                    }
                };
                taken.push(port);
                p["nodePort"] = json!(port);
                extra.push((format!("{PORT_PREFIX}{proto}/{port}").into_bytes(), owner.clone().into_bytes()));
            }
        }
    }
    Ok(extra)
}

impl Api {
    /// The allocation keys to delete with a Service: its IP and node ports, only those that
    /// this Service holds (an allocation is never released on another Service's behalf).
    pub async fn owned_release_keys(&self, t: &Target, old: &Value) -> ApiResult<Vec<Vec<u8>>> {
        let owner = format!("{}/{}", old["metadata"]["namespace"].as_str().unwrap_or(""), old["metadata"]["name"].as_str().unwrap_or(""));
        let mut out = Vec::new();
        for k in release_keys(t, old) {
            let req = raftstore::types::RangeRequest { key: k.clone(), ..Default::default() };
            let (resp, _) = self.store.replica.range(&req, false).await?;
            if resp.kvs.first().map(|kv| kv.value == owner.as_bytes()).unwrap_or(false) {
                out.push(k);
            }
        }
        Ok(out)
    }
}

/// Keys a Service's allocations live under (its IP and node ports).
pub fn release_keys(t: &Target, old: &Value) -> Vec<Vec<u8>> {
    if !(t.res.group.is_empty() && t.res.kind == "Service") {
        return vec![];
    }
    let mut out = Vec::new();
    if let Some(ip) = old["spec"]["clusterIP"].as_str().filter(|s| !s.is_empty() && *s != "None") {
        out.push(format!("{IP_PREFIX}{ip}").into_bytes());
    }
    for p in old["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_u64() {
            let proto = p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
            out.push(format!("{PORT_PREFIX}{proto}/{n}").into_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_mask() {
        let (ip, len) = Ranges::parse_cidr("10.96.3.7/16").expect("ok");
        assert_eq!((ip, len), (Ipv4Addr::new(10, 96, 0, 0), 16));
        assert!(Ranges::parse_cidr("10.96.0.0").is_err());
        assert!(Ranges::parse_cidr("10.96.0.0/31").is_err());
        let r = Ranges::default();
        assert!(r.contains(Ipv4Addr::new(10, 96, 200, 1)));
        assert!(!r.contains(Ipv4Addr::new(10, 97, 0, 1)));
        assert_eq!(r.first(), Ipv4Addr::new(10, 96, 0, 1));
    }
}
