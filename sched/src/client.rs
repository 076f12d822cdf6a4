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

/// The transport of an in-process API (the replica's own API server, called directly).
pub type LocalTransport = tower::util::BoxCloneSyncService<http::Request<kube::client::Body>, http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>>, std::convert::Infallible>;

/// How a component reaches the API: over HTTPS as `config` says, or, inside a replica, through
/// that replica's API server in process (`local`; `config` then supplies only the default
/// namespace and extra headers such as the User-Agent).
#[derive(Clone)]
pub struct Access {
    pub config: kube::Config,
    local: Option<LocalTransport>,
}

impl From<kube::Config> for Access {
    fn from(config: kube::Config) -> Access {
        Access { config, local: None }
    }
}

impl Access {
    /// In process, through `service` (the replica's API server), naming the component `agent`
    /// in the User-Agent as `with_user_agent` does.
    pub fn in_process<S>(service: S, agent: &str) -> anyhow::Result<Access>
    where
        S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>>, Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        // Never dialled: requests go to `service`; kube wants a URL all the same.
        let config = with_user_agent(kube::Config::new("https://in-process.invalid".parse()?), agent);
        Ok(Access { config, local: Some(tower::util::BoxCloneSyncService::new(service)) })
    }

    /// A client with the config's headers plus `headers`, whose every response is shown to
    /// `on_response` (headers only).
    pub fn client_with(&self, headers: Vec<(http::HeaderName, http::HeaderValue)>, on_response: impl Fn(&http::HeaderMap) + Clone + Send + Sync + 'static) -> anyhow::Result<kube::Client> {
        use anyhow::Context as _;
        use tower::util::{MapRequestLayer, MapResponseLayer};
        fn observe<B>(f: impl Fn(&http::HeaderMap) + Clone) -> impl Fn(http::Response<B>) -> http::Response<B> + Clone {
            move |resp| {
                f(resp.headers());
                resp
            }
        }
        match &self.local {
            None => {
                let mut config = self.config.clone();
                config.headers.extend(headers);
                let builder = kube::client::ClientBuilder::try_from(config).context("building a client")?;
                Ok(builder.with_layer(&MapResponseLayer::new(observe(on_response))).build())
            }
            Some(transport) => {
                let mut all = self.config.headers.clone();
                all.extend(headers);
                let add_headers = move |mut req: http::Request<kube::client::Body>| {
                    for (k, v) in &all {
                        req.headers_mut().insert(k.clone(), v.clone());
                    }
                    req
                };
                let builder = kube::client::ClientBuilder::new(transport.clone(), self.config.default_namespace.clone());
                Ok(builder.with_layer(&MapRequestLayer::new(add_headers)).with_layer(&MapResponseLayer::new(observe(on_response))).build())
            }
        }
    }

    /// A plain client.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        self.client_with(Vec::new(), |_| {})
    }
}
