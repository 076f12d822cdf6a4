//! Node IPAM, range allocator (upstream pkg/controller/nodeipam with --allocate-node-cidrs):
//! every Node without spec.podCIDR gets the next free subnet of --cluster-cidr of size
//! --node-cidr-mask-size in spec.podCIDR and spec.podCIDRs.
//!
//! The subnets in use are those of the Nodes in the cache plus this process's assignments the
//! cache has not shown yet, so a subnet is free again once its Node is gone, and a new leader
//! starts from what the Nodes say. The assignment is a compare-and-swap on the Node's
//! resourceVersion, so no subnet is given twice.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::NodeSettings;

const COMPONENT: &str = "cidrAllocator";

/// The subnets of a cluster CIDR: `count` blocks of /`mask` from `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnets {
    base: u32,
    mask: u8,
    count: u64,
}

impl Subnets {
    pub fn new(cluster_cidr: &str, mask: u8) -> anyhow::Result<Subnets> {
        let (addr, prefix) = cluster_cidr.split_once('/').with_context(|| format!("--cluster-cidr {cluster_cidr:?} is not a CIDR"))?;
        let addr: Ipv4Addr = addr.parse().with_context(|| format!("--cluster-cidr {cluster_cidr:?}: only IPv4 is supported"))?;
        let prefix: u8 = prefix.parse().with_context(|| format!("--cluster-cidr {cluster_cidr:?}: bad prefix length"))?;
        if prefix > 32 || mask > 32 {
            bail!("prefix lengths must be at most 32");
        }
        if mask < prefix {
            bail!("--node-cidr-mask-size {mask} must not be smaller than the cluster CIDR's prefix /{prefix}");
        }
        if mask - prefix > 30 {
            bail!("--node-cidr-mask-size {mask} makes too many subnets of /{prefix}");
        }
        let net_mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
        Ok(Subnets { base: u32::from(addr) & net_mask, mask, count: 1u64 << (mask - prefix) })
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn cidr(&self, i: u64) -> String {
        let step = if self.mask == 32 { 1 } else { 1u64 << (32 - self.mask) };
        format!("{}/{}", Ipv4Addr::from((self.base as u64 + i * step) as u32), self.mask)
    }

    /// Which of our subnets `cidr` is, if it is exactly one of them.
    pub fn index_of(&self, cidr: &str) -> Option<u64> {
        let (a, m) = cidr.split_once('/')?;
        let a = u32::from(a.parse::<Ipv4Addr>().ok()?) as u64;
        if m.parse::<u8>().ok()? != self.mask || a < self.base as u64 {
            return None;
        }
        let step = if self.mask == 32 { 1 } else { 1u64 << (32 - self.mask) };
        let off = a - self.base as u64;
        (off.is_multiple_of(step) && off / step < self.count).then_some(off / step)
    }

    /// The first free subnet at or after `next` (wrapping), as upstream's CidrSet hands them out.
    pub fn pick(&self, used: &HashSet<u64>, next: u64) -> Option<u64> {
        (0..self.count).map(|k| (next + k) % self.count).find(|i| !used.contains(i))
    }
}

struct Ctx {
    client: Client,
    nodes: Store<Node>,
    subnets: Subnets,
    state: Mutex<Alloc>,
}

#[derive(Default)]
struct Alloc {
    /// Assignments written but maybe not in the cache yet: node name → subnet.
    pending: HashMap<String, u64>,
    next: u64,
    /// Nodes already told CIDRNotAvailable (once, not at every retry).
    told: HashSet<String>,
}

fn pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let mut v: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if let Some(c) = spec.and_then(|s| s.pod_cidr.clone()).filter(|c| !c.is_empty()) {
        if !v.contains(&c) {
            v.push(c);
        }
    }
    v
}

pub async fn run(client: Client, settings: Arc<NodeSettings>, inf: Arc<crate::informer::Informers>) -> anyhow::Result<()> {
    let subnets = match Subnets::new(&settings.cluster_cidr, settings.node_cidr_mask_size) {
        Ok(s) => s,
        Err(e) => {
            // A bad setting must not take the other controllers down with it (the manager
            // restarts them all when one fails): say so and allocate nothing.
            tracing::error!(error = %format!("{e:#}"), "node CIDR allocation disabled");
            return futures::future::pending().await;
        }
    };
    tracing::info!(cluster_cidr = %settings.cluster_cidr, mask = settings.node_cidr_mask_size, subnets = subnets.len(), "node CIDR allocator starting");
    // The cache must hold every node before we can tell which subnets are free: start once
    // the shared node cache has its first list.
    inf.nodes.wait_ready().await?;
    let nodes = inf.nodes.store();
    let ctl = Controller::for_shared_stream(inf.nodes.subscribe_applied(), nodes.clone());
    let ctx = Arc::new(Ctx { client, nodes, subnets, state: Mutex::new(Alloc::default()) });
    crate::util::drain("nodeipam", ctl.run(reconcile, crate::util::error_policy, ctx)).await;
    Ok(())
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&node, &ctx).await?)
}

async fn sync(node: &Node, ctx: &Ctx) -> anyhow::Result<Action> {
    let name = node.name_any();
    if node.metadata.deletion_timestamp.is_some() || !pod_cidrs(node).is_empty() {
        return Ok(Action::await_change());
    }
    let picked = {
        let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
        let all = ctx.nodes.state();
        let in_cache: HashMap<String, bool> = all.iter().map(|n| (n.name_any(), !pod_cidrs(n).is_empty())).collect();
        // Keep pending assignments the cache does not show yet (node there, still no CIDR).
        st.pending.retain(|n, _| in_cache.get(n) == Some(&false));
        st.told.retain(|n| in_cache.contains_key(n));
        let mut used: HashSet<u64> = all.iter().flat_map(|n| pod_cidrs(n)).filter_map(|c| ctx.subnets.index_of(&c)).collect();
        used.extend(st.pending.values().copied());
        match ctx.subnets.pick(&used, st.next) {
            Some(i) => {
                st.pending.insert(name.clone(), i);
                st.told.remove(&name);
                st.next = (i + 1) % ctx.subnets.len();
                Some(i)
            }
            None => None,
        }
    };
    let Some(i) = picked else {
        let first = ctx.state.lock().unwrap_or_else(|e| e.into_inner()).told.insert(name.clone());
        if first {
            tracing::warn!(node = %name, "no pod CIDR left for node");
            crate::events::normal(&ctx.client, COMPONENT, node, "CIDRNotAvailable", format!("Node {name} status is now: CIDRNotAvailable")).await;
        }
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let cidr = ctx.subnets.cidr(i);
    let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    match Api::<Node>::all(ctx.client.clone()).patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
        Ok(_) => {
            tracing::info!(node = %name, %cidr, "assigned pod CIDR");
            Ok(Action::await_change())
        }
        Err(e) => {
            ctx.state.lock().unwrap_or_else(|e| e.into_inner()).pending.remove(&name);
            if !crate::util::is_status(&e, 409) && !crate::util::is_not_found(&e) {
                crate::events::record(&ctx.client, COMPONENT, node, "Warning", "CIDRAssignmentFailed", format!("Node {name} status is now: CIDRAssignmentFailed")).await;
            }
            Err(e).with_context(|| format!("assigning pod CIDR {cidr} to node {name}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_of_a_cluster_cidr() {
        let s = Subnets::new("10.244.0.0/16", 24).unwrap();
        assert_eq!(s.len(), 256);
        assert_eq!(s.cidr(0), "10.244.0.0/24");
        assert_eq!(s.cidr(255), "10.244.255.0/24");
        assert_eq!(s.index_of("10.244.7.0/24"), Some(7));
        assert_eq!(s.index_of("10.244.7.1/24"), None, "not a subnet boundary");
        assert_eq!(s.index_of("10.245.0.0/24"), None, "outside");
        assert_eq!(s.index_of("10.244.7.0/25"), None, "other size");
        assert_eq!(s.index_of("garbage"), None);
        let s = Subnets::new("10.0.0.5/8", 26).unwrap();
        assert_eq!(s.cidr(1), "10.0.0.64/26", "host bits of the cluster CIDR ignored");
        assert!(Subnets::new("10.0.0.0/24", 16).is_err());
        assert!(Subnets::new("fd00::/48", 64).is_err());
        assert!(Subnets::new("10.0.0.0", 24).is_err());
        assert!(Subnets::new("0.0.0.0/0", 32).is_err(), "2^32 subnets is too many");
    }

    #[test]
    fn pick_skips_used_and_wraps() {
        let s = Subnets::new("10.0.0.0/30", 32).unwrap();
        let used: HashSet<u64> = [0, 2].into();
        assert_eq!(s.pick(&used, 0), Some(1));
        assert_eq!(s.pick(&used, 2), Some(3));
        assert_eq!(s.pick(&[0, 1, 3].into(), 3), Some(2), "wraps round");
        assert_eq!(s.pick(&[0, 1, 2, 3].into(), 0), None);
    }
}
