//! The leader-elected components every replica runs beside its API: the scheduler and the
//! controller manager. They reach the replica's own API with their own client certificates
//! (`kuberaft certs` makes scheduler.crt and controller-manager.crt beside the CA; an older
//! certificate directory without them falls back to the administrator's).

use std::path::{Path, PathBuf};
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

/// Starts the scheduler and controller manager as tasks; each restarts after an error.
pub fn spawn(identity: &str, api: &apiserver::ApiConfig, election: &ElectionArgs) {
    let pki = api.cacert.parent().map(Path::to_path_buf).unwrap_or_default();
    let host = if api.listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { api.listen.ip().to_string() };
    let server = format!("https://{host}:{}", api.listen.port());
    let ca = api.cacert.clone();
    {
        let (cert, key) = cert_pair(&pki, "scheduler");
        let (server, ca, identity) = (server.clone(), ca.clone(), identity.to_string());
        let mut opts = sched::SchedulerOptions::new(&identity);
        opts.election = Some(election.config(&opts.lease_name, &identity));
        tokio::spawn(async move {
            loop {
                let res = match sched::client::config_from_files(&server, &ca, &cert, &key).await {
                    Ok(cfg) => sched::run_scheduler(sched::client::with_user_agent(cfg, "kuberaft-scheduler"), opts.clone()).await,
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
        let (cert, key) = cert_pair(&pki, "controller-manager");
        let (server, ca, identity) = (server, ca, identity.to_string());
        let base = controllers::ControllerManagerOptions::new(&identity);
        let election = election.config(&base.lease_name, &identity);
        tokio::spawn(async move {
            loop {
                let root_ca = std::fs::read_to_string(&ca).ok();
                let res = match sched::client::config_from_files(&server, &ca, &cert, &key).await {
                    Ok(cfg) => {
                        let mut o = controllers::ControllerManagerOptions::new(&identity);
                        o.root_ca_pem = root_ca;
                        o.election = Some(election.clone());
                        controllers::run_controller_manager(sched::client::with_user_agent(cfg, "kuberaft-controller-manager"), o).await
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
