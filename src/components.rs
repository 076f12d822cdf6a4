//! The leader-elected components every replica runs beside its API: the scheduler and the
//! controller manager. They call the replica's own API in process, as the users of their own
//! client certificates (`kuberaft certs` makes scheduler.crt and controller-manager.crt beside
//! the CA; an older certificate directory without them falls back to the administrator's).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn cert_pair(pki: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (c, k) = (pki.join(format!("{name}.crt")), pki.join(format!("{name}.key")));
    if c.exists() && k.exists() {
        (c, k)
    } else {
        tracing::warn!("{} missing: {name} runs with the administrator's certificate", c.display());
        (pki.join("client.crt"), pki.join("client.key"))
    }
}

/// Leader election timings of the scheduler and controller manager. Shorter than client-go's
/// 15/10/2 s so that a live replica takes over within 3 s of the leader dying (at most a lease
/// duration plus a retry period after its last renewal); raise them on slow or overloaded machines.
#[derive(clap::Args, Clone, Debug)]
pub struct ElectionArgs {
    /// How long a leader's Lease stays valid after its last renewal, in seconds.
    #[arg(long, default_value_t = 2.5)]
    pub leader_elect_lease_duration: f64,
    /// How long a leader keeps trying to renew before it steps down, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub leader_elect_renew_deadline: f64,
    /// Between attempts to acquire or renew, in seconds.
    #[arg(long, default_value_t = 0.5)]
    pub leader_elect_retry_period: f64,
}

impl Default for ElectionArgs {
    fn default() -> Self {
        ElectionArgs { leader_elect_lease_duration: 2.5, leader_elect_renew_deadline: 2.0, leader_elect_retry_period: 0.5 }
    }
}

impl ElectionArgs {
    fn config(&self, name: &str, identity: &str) -> sched::election::ElectionConfig {
        let d = |s: f64| Duration::from_secs_f64(s.clamp(0.1, 3600.0));
        let mut e = sched::election::ElectionConfig::new("kube-system", name, identity);
        e.lease_duration = d(self.leader_elect_lease_duration);
        // A leader must give up before its Lease can expire for others.
        e.renew_deadline = d(self.leader_elect_renew_deadline.min(self.leader_elect_lease_duration * 0.9));
        e.retry_period = d(self.leader_elect_retry_period.min(self.leader_elect_renew_deadline / 2.0));
        e
    }
}

/// Node controller settings, with kube-controller-manager's flag names and defaults.
#[derive(clap::Args, Clone, Debug)]
pub struct NodeControllerArgs {
    /// How often the node lifecycle controller checks node health (a duration: 5s, 500ms, 1m; or seconds).
    #[arg(long, default_value = "5s", value_parser = duration_seconds)]
    pub node_monitor_period: f64,
    /// How long a node may go without a heartbeat (Lease or status) before it is marked Unknown (a duration).
    #[arg(long, default_value = "40s", value_parser = duration_seconds)]
    pub node_monitor_grace_period: f64,
    /// The same for a node that never posted its status (a duration).
    #[arg(long, default_value = "60s", value_parser = duration_seconds)]
    pub node_startup_grace_period: f64,
    /// Nodes per second whose pods are evicted (tainted NoExecute) in a healthy zone.
    #[arg(long, default_value_t = 0.1)]
    pub node_eviction_rate: f64,
    /// The same in an unhealthy zone of a large cluster.
    #[arg(long, default_value_t = 0.01)]
    pub secondary_node_eviction_rate: f64,
    /// Zones with more nodes than this are large (evictions continue at the secondary rate when unhealthy).
    #[arg(long, default_value_t = 50)]
    pub large_cluster_size_threshold: usize,
    /// Share of not-ready nodes (at least 3) that makes a zone unhealthy.
    #[arg(long, default_value_t = 0.55)]
    pub unhealthy_zone_threshold: f64,
    /// Assign each Node a pod CIDR from --cluster-cidr.
    #[arg(long)]
    pub allocate_node_cidrs: bool,
    /// The pod network the node CIDRs are cut from (IPv4).
    #[arg(long, default_value = "10.244.0.0/16", value_parser = ipv4_cidr)]
    pub cluster_cidr: String,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Terminated pods kept before the oldest are deleted (0: no limit).
    #[arg(long, default_value_t = 12500)]
    pub terminated_pod_gc_threshold: i64,
    /// How long a pod's node must have been missing before pod GC deletes the pod (a duration; kuberaft's own flag, upstream's is fixed at 40s).
    #[arg(long, default_value = "40s", value_parser = duration_seconds)]
    pub pod_gc_orphan_quarantine: f64,
}

/// A duration as kube-controller-manager takes it ("40s", "500ms", "5m", "1h", "1m30s") or
/// plain seconds ("40", "0.5"), in seconds.
fn duration_seconds(v: &str) -> Result<f64, String> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return if s.is_finite() && s >= 0.0 { Ok(s) } else { Err(format!("{v:?} is not a duration")) };
    }
    let mut total = 0.0;
    let mut rest = v;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| format!("{v:?}: missing unit (ms, s, m, h)"))?;
        let n: f64 = rest[..num_end].parse().map_err(|_| format!("{v:?} is not a duration"))?;
        let unit_end = rest[num_end..].find(|c: char| c.is_ascii_digit() || c == '.').map_or(rest.len(), |i| num_end + i);
        let scale = match &rest[num_end..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{v:?}: unknown unit {u:?} (ms, s, m, h)")),
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    if v.is_empty() { Err("empty duration".into()) } else { Ok(total) }
}

fn ipv4_cidr(v: &str) -> Result<String, String> {
    let (a, p) = v.split_once('/').ok_or_else(|| format!("{v:?} is not a CIDR (a.b.c.d/n)"))?;
    a.parse::<std::net::Ipv4Addr>().map_err(|_| format!("{v:?}: only IPv4 CIDRs are supported"))?;
    match p.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(v.to_string()),
        _ => Err(format!("{v:?}: bad prefix length")),
    }
}

impl Default for NodeControllerArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: NodeControllerArgs,
        }
        P::parse_from(["x"]).a
    }
}

impl NodeControllerArgs {
    fn settings(&self) -> controllers::NodeSettings {
        let d = |s: f64| Duration::from_secs_f64(s.clamp(0.1, 86400.0));
        controllers::NodeSettings {
            monitor_period: d(self.node_monitor_period),
            grace_period: d(self.node_monitor_grace_period),
            startup_grace_period: d(self.node_startup_grace_period),
            eviction_rate: self.node_eviction_rate.max(0.0),
            secondary_eviction_rate: self.secondary_node_eviction_rate.max(0.0),
            large_cluster_size_threshold: self.large_cluster_size_threshold,
            unhealthy_zone_threshold: self.unhealthy_zone_threshold,
            allocate_node_cidrs: self.allocate_node_cidrs,
            cluster_cidr: self.cluster_cidr.clone(),
            node_cidr_mask_size: self.node_cidr_mask_size,
            terminated_pod_gc_threshold: self.terminated_pod_gc_threshold,
            pod_gc_orphan_quarantine: d(self.pod_gc_orphan_quarantine),
            // Upstream's 20 s, or the quarantine if shorter, so a short one is honoured.
            pod_gc_period: d(self.pod_gc_orphan_quarantine.min(20.0)),
        }
    }
}

/// How a component reaches the API: in process, as the user its certificate names.
fn local_access(api: &Arc<apiserver::Api>, pki: &Path, cert_name: &str, agent: &str) -> anyhow::Result<sched::client::Access> {
    let (cert, _) = cert_pair(pki, cert_name);
    let pem = std::fs::read(&cert).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert.display()))?;
    let user = apiserver::server::user_of_cert_pem(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    sched::client::Access::in_process(apiserver::server::LocalService::new(api.clone(), user), agent)
}

/// Starts the scheduler and controller manager as tasks of this replica; each restarts after
/// an error. They call the replica's API server in process (no TCP, TLS or HTTP/2 on
/// loopback), through its whole request path, as the users their certificates name
/// (`kuberaft certs` makes scheduler.crt and controller-manager.crt beside the CA).
pub fn spawn(identity: &str, api: Arc<apiserver::Api>, election: &ElectionArgs, nodes: &NodeControllerArgs) {
    let nodes = nodes.settings();
    let pki = api.cfg.cacert.parent().map(Path::to_path_buf).unwrap_or_default();
    {
        let (api, pki, identity) = (api.clone(), pki.clone(), identity.to_string());
        let mut opts = sched::SchedulerOptions::new(&identity);
        opts.election = Some(election.config(&opts.lease_name, &identity));
        tokio::spawn(async move {
            loop {
                let res = match local_access(&api, &pki, "scheduler", "kuberaft-scheduler") {
                    Ok(access) => sched::run_scheduler(access, opts.clone()).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    tracing::warn!("scheduler stopped: {e:#}; restarting");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
    {
        let identity = identity.to_string();
        let base = controllers::ControllerManagerOptions::new(&identity);
        let election = election.config(&base.lease_name, &identity);
        let ca = api.cfg.cacert.clone();
        tokio::spawn(async move {
            loop {
                let root_ca = std::fs::read_to_string(&ca).ok();
                let res = match local_access(&api, &pki, "controller-manager", "kuberaft-controller-manager") {
                    Ok(access) => {
                        let mut o = controllers::ControllerManagerOptions::new(&identity);
                        o.root_ca_pem = root_ca;
                        o.election = Some(election.clone());
                        o.nodes = nodes.clone();
                        controllers::run_controller_manager(access, o).await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    tracing::warn!("controller manager stopped: {e:#}; restarting");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_kube_controller_manager_takes_them() {
        assert_eq!(duration_seconds("40s"), Ok(40.0));
        assert_eq!(duration_seconds("4"), Ok(4.0));
        assert_eq!(duration_seconds("500ms"), Ok(0.5));
        assert_eq!(duration_seconds("1m30s"), Ok(90.0));
        assert_eq!(duration_seconds("1h"), Ok(3600.0));
        for bad in ["", "4x", "s", "-1", "NaN", "1.2.3s"] {
            assert!(duration_seconds(bad).is_err(), "{bad}");
        }
        assert!(ipv4_cidr("10.244.0.0/16").is_ok());
        for bad in ["10.244.0.0", "fd00::/64", "10.0.0.0/33", "x/8"] {
            assert!(ipv4_cidr(bad).is_err(), "{bad}");
        }
        let d = NodeControllerArgs::default();
        assert_eq!((d.node_monitor_grace_period, d.node_monitor_period, d.cluster_cidr.as_str(), d.node_cidr_mask_size), (40.0, 5.0, "10.244.0.0/16", 24));
    }
}
