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

/// Starts the scheduler and controller manager as tasks; each restarts after an error.
pub fn spawn(identity: &str, api: &apiserver::ApiConfig) {
    let pki = api.cacert.parent().map(Path::to_path_buf).unwrap_or_default();
    let host = if api.listen.ip().is_unspecified() { "127.0.0.1".to_string() } else { api.listen.ip().to_string() };
    let server = format!("https://{host}:{}", api.listen.port());
    let ca = api.cacert.clone();
    {
        let (cert, key) = cert_pair(&pki, "scheduler");
        let (server, ca, identity) = (server.clone(), ca.clone(), identity.to_string());
        tokio::spawn(async move {
            loop {
                let res = match sched::client::config_from_files(&server, &ca, &cert, &key).await {
                    Ok(cfg) => sched::run_scheduler(cfg, sched::SchedulerOptions::new(&identity)).await,
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
        tokio::spawn(async move {
            loop {
                let root_ca = std::fs::read_to_string(&ca).ok();
                let res = match sched::client::config_from_files(&server, &ca, &cert, &key).await {
                    Ok(cfg) => controllers::run_controller_manager(cfg, controllers::ControllerManagerOptions { root_ca_pem: root_ca, ..controllers::ControllerManagerOptions::new(&identity) }).await,
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
