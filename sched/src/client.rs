//! A kube::Config for a component that runs inside a replica and talks to that replica's own
//! API with a client certificate from the cluster CA.

use base64::Engine;

/// Config for `server` (https://host:port), trusting `ca_pem`, authenticating with the
/// certificate and key (PEM).
pub async fn config_for(server: &str, ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<kube::Config> {
    let b = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        b(ca_pem),
        b(cert_pem),
        b(key_pem)
    );
    let kc = kube::config::Kubeconfig::from_yaml(&text)?;
    Ok(kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?)
}

/// Names the component in its requests' User-Agent, which the API server uses as the field
/// manager of its writes (as Kubernetes does).
pub fn with_user_agent(mut config: kube::Config, agent: &str) -> kube::Config {
    if let Ok(v) = http::HeaderValue::from_str(&format!("{agent}/{}", env!("CARGO_PKG_VERSION"))) {
        config.headers.push((http::header::USER_AGENT, v));
    }
    config
}

/// Reads the files, then config_for().
pub async fn config_from_files(server: &str, ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<kube::Config> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
    config_for(server, &read(ca)?, &read(cert)?, &read(key)?).await
}
