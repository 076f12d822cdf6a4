//! pods/log, exec, attach and portforward: proxied to the node daemon that runs the pod, at
//! kubelet's paths (`/containerLogs`, `/exec`, `/attach`, `/portForward`), over TLS with the
//! apiserver's client certificate. Upgrades (WebSocket, SPDY) are spliced byte for byte once the
//! node answers 101, so every streaming protocol the node speaks reaches the client unchanged.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::request::{Reply, Request};
use crate::rest::Target;
use crate::store::{object_key, Freshness};
use crate::Api;

/// kubelet's default port, used when the Node does not say.
const DEFAULT_NODE_PORT: i64 = 10250;

/// Headers that belong to the hop, not the request.
const HOP: &[&str] = &["host", "authorization", "content-length", "transfer-encoding", "te", "trailer", "keep-alive", "proxy-connection"];

pub fn node_tls(cacert: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read(cacert)?[..]) {
        roots.add(c?)?;
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read(cert)?[..]).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut &read(key)?[..])?.ok_or_else(|| anyhow::anyhow!("no private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(roots).with_client_auth_cert(certs, key)?;
    // Upgrades need HTTP/1.1.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The container a request means: the `container` parameter, else the default-container
/// annotation, else the only container. Errors are worded as Kubernetes words them.
fn pick_container(pod: &Value, asked: Option<&str>) -> ApiResult<String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    let mut all: Vec<&str> = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        all.extend(pod["spec"][list].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()));
    }
    match asked.filter(|a| !a.is_empty()) {
        Some(c) if all.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::BadRequest(format!("container {c} is not valid for pod {name}"))),
        None => {
            if let Some(d) = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str() {
                if all.contains(&d) {
                    return Ok(d.to_string());
                }
            }
            let main: Vec<&str> = pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
            match main.as_slice() {
                [one] => Ok(one.to_string()),
                [] => Err(ApiError::BadRequest(format!("pod {name} has no containers"))),
                many => Err(ApiError::BadRequest(format!("a container name must be specified for pod {name}, choose one of: [{}]", many.join(" ")))),
            }
        }
    }
}

/// host:port of the node daemon from the Node object.
fn node_address(node: &Value) -> Option<String> {
    let addrs = node["status"]["addresses"].as_array()?;
    let pick = |ty: &str| addrs.iter().find(|a| a["type"] == ty).and_then(|a| a["address"].as_str());
    let host = pick("InternalIP").or_else(|| pick("Hostname")).or_else(|| pick("ExternalIP"))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_i64().filter(|p| *p > 0).unwrap_or(DEFAULT_NODE_PORT);
    Some(if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") })
}

impl Api {
    pub async fn proxy_to_node(&self, req: &Request, t: &Target, sub: &str) -> ApiResult<Reply> {
        let pod_t = Target { sub: None, ..t.clone() };
        let (pod, _) = self.store.get(&pod_t.key(), Freshness::Latest).await?.ok_or_else(|| ApiError::NotFound { gr: t.res.gr(), name: t.name.clone().unwrap_or_default() })?;
        let ns = t.ns.clone().unwrap_or_default();
        let name = t.name.clone().unwrap_or_default();
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
        if node_name.is_empty() {
            return Err(ApiError::BadRequest(format!("pod {name} does not have a host assigned")));
        }
        let cat = self.catalog.get();
        let nodes = cat.lookup("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
        let (node, _) = self
            .store
            .get(&object_key(&nodes, None, &node_name), Freshness::Any)
            .await?
            .ok_or_else(|| ApiError::BadRequest(format!("node {node_name} of pod {name} is not registered")))?;
        let addr = node_address(&node).ok_or_else(|| ApiError::BadRequest(format!("node {node_name} has no address to reach it at")))?;
        let query: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(req.query.0.iter().filter(|(k, _)| k != "container")).finish();
        let path = match sub {
            "log" => {
                let c = pick_container(&pod, req.query.get("container"))?;
                format!("/containerLogs/{ns}/{name}/{c}")
            }
            "exec" | "attach" => {
                let c = pick_container(&pod, req.query.get("container"))?;
                format!("/{sub}/{ns}/{name}/{c}")
            }
            _ => format!("/portForward/{ns}/{name}"),
        };
        let uri = if query.is_empty() { path } else { format!("{path}?{query}") };
        self.forward(req, &addr, &uri).await
    }

    async fn forward(&self, req: &Request, addr: &str, uri: &str) -> ApiResult<Reply> {
        let unavailable = |e: String| ApiError::Unavailable(format!("error dialing the node daemon at {addr}: {e}"));
        let tls = self.node_tls.clone().ok_or_else(|| ApiError::Unavailable("no client certificate for reaching nodes".into()))?;
        let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| unavailable("timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let host = addr.rsplit_once(':').map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']')).unwrap_or(addr).to_string();
        let server_name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| unavailable(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls).connect(server_name, tcp).await.map_err(|e| unavailable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unavailable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut b = hyper::Request::builder().method(req.method.clone()).uri(uri).header("host", &host);
        for (k, v) in req.headers.iter() {
            if !HOP.contains(&k.as_str()) {
                b = b.header(k, v);
            }
        }
        let out = b.body(Full::new(req.body.clone())).map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut resp = sender.send_request(out).await.map_err(|e| unavailable(e.to_string()))?;
        if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
            let client_up = req.upgrade.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| ApiError::BadRequest("the node switched protocols but this request cannot be upgraded".into()))?;
            let node_up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match (client_up.await, node_up.await) {
                    (Ok(c), Ok(n)) => {
                        let mut c = TokioIo::new(c);
                        let mut n = TokioIo::new(n);
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut n).await;
                    }
                    (Err(e), _) | (_, Err(e)) => tracing::debug!("upgrade failed: {e}"),
                }
            });
            let mut r = hyper::Response::builder().status(101);
            for (k, v) in resp.headers() {
                r = r.header(k, v);
            }
            return Ok(Reply::Proxied(r.body(Full::new(Bytes::new()).boxed()).map_err(|e| ApiError::Internal(e.to_string()))?));
        }
        // Plain responses (logs, errors) stream through as they come.
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body();
        let stream = futures::stream::unfold(body, |mut body| async move {
            loop {
                match body.frame().await {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => return Some((Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(d)), body)),
                        Err(_) => continue,
                    },
                    _ => return None,
                }
            }
        });
        let mut r = hyper::Response::builder().status(status);
        for (k, v) in headers.iter() {
            if !HOP.contains(&k.as_str()) && k != "connection" {
                r = r.header(k, v);
            }
        }
        Ok(Reply::Proxied(r.body(http_body_util::StreamBody::new(stream).boxed()).map_err(|e| ApiError::Internal(e.to_string()))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_the_asked_one_the_default_or_the_only_one() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(pick_container(&pod, Some("b")).ok().as_deref(), Some("b"));
        assert_eq!(pick_container(&pod, Some("i")).ok().as_deref(), Some("i"));
        assert_eq!(pick_container(&pod, Some("x")).err().map(|e| e.to_string()).as_deref(), Some("container x is not valid for pod p"));
        assert_eq!(pick_container(&pod, None).err().map(|e| e.to_string()).as_deref(), Some("a container name must be specified for pod p, choose one of: [a b]"));
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).ok().as_deref(), Some("a"));
        let annotated = json!({"metadata": {"name": "p", "annotations": {"kubectl.kubernetes.io/default-container": "b"}}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&annotated, None).ok().as_deref(), Some("b"));
    }

    #[test]
    fn node_address_prefers_internal_ip_and_the_advertised_port() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 10255}}}});
        assert_eq!(node_address(&n).as_deref(), Some("10.0.0.5:10255"));
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(node_address(&n).as_deref(), Some("n1:10250"));
        assert_eq!(node_address(&json!({})), None);
    }
}
