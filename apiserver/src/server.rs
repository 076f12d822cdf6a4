//! HTTPS (HTTP/2 and HTTP/1.1 by ALPN), authentication, authorization and routing.
//!
//! Client certificates are optional at the TLS layer so that bearer tokens and anonymous
//! requests reach us; anonymous requests get 401 except health and version.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use crate::catalog::{KUBE_GIT_VERSION, KUBE_MINOR};
use crate::error::{ApiError, ApiResult};
use crate::request::{Query, Reply, Request, User};
use crate::rest::Target;
use crate::Api;

/// Request bodies above this are refused with 413 (Kubernetes' limit is 3 MiB).
pub const MAX_BODY: usize = 3 << 20;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Parses a static token file: `token,user,uid,"group1,group2"` per line.
pub fn parse_token_file(text: &str) -> anyhow::Result<HashMap<String, User>> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (head, groups) = match line.find('"') {
            Some(q) => (&line[..q], line[q..].trim_matches('"')),
            None => (line, ""),
        };
        let cols: Vec<&str> = head.split(',').map(str::trim).collect();
        if cols.len() < 2 || cols[0].is_empty() || cols[1].is_empty() {
            anyhow::bail!("token file line {}: expected token,user,uid[,\"groups\"]", i + 1);
        }
        let mut gs: Vec<String> = groups.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect();
        gs.push("system:authenticated".into());
        out.insert(cols[0].to_string(), User { name: cols[1].to_string(), groups: gs });
    }
    Ok(out)
}

/// User and groups from a client certificate: CN and every O.
fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let mut groups: Vec<String> = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// The identity a client certificate (PEM) authenticates as.
pub fn user_of_cert_pem(pem: &[u8]) -> anyhow::Result<User> {
    let der = rustls_pemfile::certs(&mut &pem[..]).next().ok_or_else(|| anyhow::anyhow!("no certificate"))??;
    user_from_cert(der.as_ref()).ok_or_else(|| anyhow::anyhow!("the certificate names no user (CN)"))
}

/// The API served in process, as one user: for the replica's own components (scheduler,
/// controller manager), which would otherwise reach the same handler through TCP, TLS and
/// HTTP/2 on loopback. Requests go through everything a remote one does (authorization,
/// admission, fencing, metrics) except the transport; the user is the identity of the
/// component's certificate, so its permissions are the same either way.
#[derive(Clone)]
pub struct LocalService {
    api: Arc<Api>,
    user: User,
}

impl LocalService {
    pub fn new(api: Arc<Api>, user: User) -> LocalService {
        LocalService { api, user }
    }
}

impl<B> tower::Service<hyper::Request<B>> for LocalService
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let (api, user) = (self.api.clone(), self.user.clone());
        Box::pin(async move { Ok(handle(api, req, Some(user)).await) })
    }
}

pub fn tls_config(cacert: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read(cert)?[..]).collect::<Result<_, _>>()?;
    let key = rustls_pemfile::private_key(&mut &read(key)?[..])?.ok_or_else(|| anyhow::anyhow!("no private key in {}", key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read(cacert)?[..]) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).allow_unauthenticated().build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_client_cert_verifier(verifier).with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves the API until the process stops.
pub async fn serve(api: Arc<Api>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let tls = tls_config(&api.cfg.cacert, &api.cfg.cert, &api.cfg.key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tokio::spawn(crate::bootstrap::run(api.clone()));
    tokio::spawn(crate::crd::follow(api.clone()));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            let cert_user = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| user_from_cert(c.as_ref()));
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                let cert_user = cert_user.clone();
                async move { Ok::<_, Infallible>(handle(api, req, cert_user).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}

/// Bearer token (static file, then ServiceAccount JWT) or client certificate. A request that
/// presents a bad token is not authenticated by its certificate either.
async fn authenticate(api: &Api, headers: &hyper::HeaderMap, cert_user: Option<User>) -> Option<User> {
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let tok = auth.strip_prefix("Bearer ").map(str::trim)?;
        if let Some(u) = api.cfg.tokens.get(tok) {
            return Some(u.clone());
        }
        return api.authenticate_token(tok).await;
    }
    cert_user
}

/// `kubectl --as=USER --as-group=G`: act as another user when allowed to impersonate them.
async fn impersonate(api: &Api, headers: &hyper::HeaderMap, user: User) -> ApiResult<User> {
    let Some(name) = headers.get("impersonate-user").and_then(|v| v.to_str().ok()).map(str::to_string) else {
        if headers.contains_key("impersonate-group") {
            return Err(ApiError::BadRequest("impersonating groups requires impersonating a user (Impersonate-User)".into()));
        }
        return Ok(user);
    };
    let groups: Vec<String> = headers.get_all("impersonate-group").iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect();
    let attrs = |resource: &str, name: &str, namespace: &str| crate::rbac::Attributes {
        user: user.name.clone(),
        groups: user.groups.clone(),
        verb: "impersonate".into(),
        resource_request: true,
        api_group: String::new(),
        resource: resource.into(),
        namespace: namespace.into(),
        name: name.into(),
        ..Default::default()
    };
    match name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) {
        Some((ns, sa)) => check(api, &attrs("serviceaccounts", sa, ns)).await?,
        None => check(api, &attrs("users", &name, "")).await?,
    }
    for g in &groups {
        check(api, &attrs("groups", g, "")).await?;
    }
    let mut groups = groups;
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".into());
    }
    Ok(User { name, groups })
}

/// `X-Kuberaft-Fence: NAMESPACE/LEASE=HOLDER@EPOCH` (EPOCH: the Lease's leaseTransitions when
/// the holder's term began).
fn parse_fence(v: &str) -> ApiResult<crate::store::Fence> {
    let bad = || ApiError::BadRequest(format!("X-Kuberaft-Fence {v:?} is not NAMESPACE/LEASE=HOLDER@EPOCH"));
    let (lease, token) = v.split_once('=').ok_or_else(bad)?;
    let (namespace, lease) = lease.split_once('/').ok_or_else(bad)?;
    let (holder, epoch) = token.rsplit_once('@').ok_or_else(bad)?;
    let epoch: i64 = epoch.parse().map_err(|_| bad())?;
    if namespace.is_empty() || lease.is_empty() || holder.is_empty() || epoch < 0 {
        return Err(bad());
    }
    Ok(crate::store::Fence { namespace: namespace.into(), lease: lease.into(), holder: holder.into(), epoch })
}

fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version" | "/version/") || path.starts_with("/healthz/") || path.starts_with("/livez/") || path.starts_with("/readyz/")
}

/// Serves one request from a connection (`cert_user`: its client certificate's identity) or
/// from this process (see `LocalService`).
async fn handle<B>(api: Arc<Api>, req: hyper::Request<B>, cert_user: Option<User>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let user = authenticate(&api, req.headers(), cert_user).await;
    let (mut parts, body) = req.into_parts();
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let query = Query::parse(parts.uri.query());
    let user = match user {
        Some(u) => u,
        None if is_public(&path) => User { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()] },
        None => return error_response(&ApiError::Unauthorized),
    };
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return error_response(&e),
    };
    let user = match impersonate(&api, &parts.headers, user).await {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let request = Request { method: method.clone(), path: path.clone(), query, headers: parts.headers, body, user, upgrade: std::sync::Mutex::new(upgrade) };
    let mut verb = String::from("other");
    let mut resource = String::new();
    let fence = match request.header("x-kuberaft-fence").map(parse_fence) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => return error_response(&e),
        None => None,
    };
    let res = crate::store::FENCE.scope(fence, route(&api, &request, &mut verb, &mut resource)).await;
    let resp = match res {
        Ok(r) => reply_response(r),
        Err(e) => error_response(&e),
    };
    let code = resp.status().as_u16().to_string();
    api.metrics.requests.get_or_create(&crate::metrics::RequestLabels { verb: verb.clone(), resource: resource.clone(), code: code.clone() }).inc();
    api.metrics.latency.get_or_create(&crate::metrics::VerbLabels { verb: verb.clone(), resource: resource.clone() }).observe(started.elapsed().as_secs_f64());
    tracing::debug!(%method, %path, user = %request.user.name, %code, ms = started.elapsed().as_millis() as u64, "request");
    resp
}

/// Bodies above this are not even drained: the connection is dropped instead.
const MAX_DRAIN: usize = 64 << 20;

/// Reads a request body up to MAX_BODY. A larger one is read to its end and discarded (up to
/// MAX_DRAIN) so that the client gets the 413 instead of a reset connection.
async fn read_body<B>(body: B) -> ApiResult<Bytes>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = std::pin::pin!(body);
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen += data.len();
        if seen > MAX_DRAIN {
            break;
        }
        if seen <= MAX_BODY {
            buf.extend_from_slice(&data);
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::TooLarge);
    }
    Ok(buf.freeze())
}

fn error_response(e: &ApiError) -> Response<Body> {
    let body = serde_json::to_vec(&e.status()).unwrap_or_default();
    let mut b = Response::builder().status(StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)).header("content-type", "application/json");
    if e.is_fenced() {
        // So that a fenced client can end its term from the response alone (see sched::election).
        b = b.header(FENCED_HEADER, "true");
    }
    b.body(full(body)).unwrap_or_else(|_| Response::new(full("internal error")))
}

/// Set on a response to a write refused because its fence no longer holds.
pub const FENCED_HEADER: &str = "x-kuberaft-fenced";

fn json_response(code: u16, body: &impl serde::Serialize, warnings: &[String], headers: HashMap<&'static str, String>) -> Response<Body> {
    let mut b = Response::builder().status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK)).header("content-type", "application/json");
    for w in warnings {
        // The text is quoted; embedded quotes and backslashes are escaped.
        let text = w.replace('\\', "\\\\").replace('"', "\\\"");
        b = b.header("warning", format!("299 - \"{text}\""));
    }
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b.body(full(serde_json::to_vec(body).unwrap_or_default())).unwrap_or_else(|_| Response::new(full("internal error")))
}

fn reply_response(r: Reply) -> Response<Body> {
    match r {
        Reply::Proxied(resp) => resp,
        Reply::Json { code, body, warnings, headers } => json_response(code, &body, &warnings, headers),
        Reply::Object { code, obj, warnings } => json_response(code, &crate::decoded::WithRv { obj: &obj.obj, rv: Some(obj.rv) }, &warnings, HashMap::new()),
        Reply::Raw { code, content_type, body, headers } => {
            let mut b = Response::builder().status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK)).header("content-type", content_type);
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(full(body)).unwrap_or_else(|_| Response::new(full("internal error")))
        }
        Reply::Stream { content_type, rx } => {
            let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx)) });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", content_type)
                .header("cache-control", "no-cache, private")
                .body(StreamBody::new(stream).boxed())
                .unwrap_or_else(|_| Response::new(full("internal error")))
        }
    }
}

fn version() -> Value {
    json!({
        "major": "1", "minor": KUBE_MINOR, "gitVersion": KUBE_GIT_VERSION, "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "rust", "compiler": "rustc", "platform": "linux/amd64",
    })
}

/// A JSON reply with an ETag, answering If-None-Match with 304 (discovery and OpenAPI).
fn cached_json(req: &Request, body: Bytes, content_type: &'static str, etag: &str, immutable: bool) -> Reply {
    let tag = format!("\"{etag}\"");
    let mut headers = HashMap::new();
    headers.insert("etag", tag.clone());
    headers.insert("vary", "Accept".to_string());
    if immutable {
        headers.insert("cache-control", "public, immutable".to_string());
    }
    if req.header("if-none-match").map(|v| v.split(',').any(|t| t.trim() == tag)).unwrap_or(false) {
        return Reply::Raw { code: 304, content_type, body: Bytes::new(), headers };
    }
    Reply::Raw { code: 200, content_type, body, headers }
}

fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

async fn route(api: &Arc<Api>, req: &Request, verb: &mut String, resource: &mut String) -> ApiResult<Reply> {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let accept = req.header("accept");
    match segs.as_slice() {
        ["version"] => return Ok(Reply::ok(version())),
        ["healthz" | "livez" | "readyz", ..] => return Ok(Reply::Raw { code: 200, content_type: "text/plain", body: Bytes::from_static(b"ok"), headers: HashMap::new() }),
        _ => {}
    }
    authorize_non_resource(api, req, &segs).await?;
    let cat = api.catalog.get();
    match segs.as_slice() {
        ["metrics"] => {
            let mut text = api.metrics.encode();
            text = text.replace("# EOF\n", "");
            text.push_str(&api.store.replica.metrics.render());
            Ok(Reply::Raw { code: 200, content_type: "text/plain; version=0.0.4", body: Bytes::from(text), headers: HashMap::new() })
        }
        ["api"] => {
            if crate::discovery::wants_aggregated(accept) {
                let doc = crate::discovery::aggregated(&cat, true);
                let b = json_bytes(&doc);
                let h = crate::openapi::hash(&b);
                Ok(cached_json(req, b, crate::discovery::AGGREGATED_CT, &h, false))
            } else {
                Ok(Reply::ok(crate::discovery::api_versions(&api.cfg.listen.to_string())))
            }
        }
        ["apis"] => {
            if crate::discovery::wants_aggregated(accept) {
                let doc = crate::discovery::aggregated(&cat, false);
                let b = json_bytes(&doc);
                let h = crate::openapi::hash(&b);
                Ok(cached_json(req, b, crate::discovery::AGGREGATED_CT, &h, false))
            } else {
                Ok(Reply::ok(crate::discovery::api_group_list(&cat)))
            }
        }
        ["api", "v1"] => crate::discovery::resource_list(&cat, "", "v1").map(Reply::ok).ok_or(ApiError::NoRoute),
        ["apis", g] => crate::discovery::api_group(&cat, g).map(Reply::ok).ok_or(ApiError::NoRoute),
        ["apis", g, v] => crate::discovery::resource_list(&cat, g, v).map(Reply::ok).ok_or(ApiError::NoRoute),
        ["openapi", "v3"] => {
            let docs = api.openapi_docs();
            Ok(Reply::ok(docs.root.clone()))
        }
        ["openapi", "v3", rest @ ..] => {
            let docs = api.openapi_docs();
            let key = rest.join("/");
            match docs.docs.get(&key) {
                Some((body, h)) => Ok(cached_json(req, body.clone(), "application/json", h, req.query.get("hash").is_some())),
                None => Err(ApiError::NoRoute),
            }
        }
        ["api", "v1", rest @ ..] => resource_request(api, req, "", "v1", rest, verb, resource).await,
        ["apis", g, v, rest @ ..] => resource_request(api, req, g, v, rest, verb, resource).await,
        _ => Err(ApiError::NoRoute),
    }
}

async fn authorize_non_resource(api: &Api, req: &Request, segs: &[&str]) -> ApiResult<()> {
    let is_resource = matches!(segs, ["api", "v1", _, ..] | ["apis", _, _, _, ..]);
    if is_resource || req.user.is_master() {
        return Ok(());
    }
    let verb = match req.method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "post",
        Method::PUT => "put",
        Method::DELETE => "delete",
        Method::PATCH => "patch",
        _ => "get",
    };
    let attrs = crate::rbac::Attributes {
        user: req.user.name.clone(),
        groups: req.user.groups.clone(),
        verb: verb.into(),
        resource_request: false,
        path: req.path.clone(),
        ..Default::default()
    };
    check(api, &attrs).await
}

/// Loads the RBAC objects (local reads) and decides. system:masters is always allowed.
pub async fn decide(api: &Api, attrs: &crate::rbac::Attributes) -> ApiResult<crate::rbac::Decision> {
    if attrs.groups.iter().any(|g| g == "system:masters") {
        return Ok(crate::rbac::Decision::Allow);
    }
    let load = load_policy(api).await?;
    let policy = crate::rbac::Policy { cluster_roles: &load[0], cluster_role_bindings: &load[1], roles: &load[2], role_bindings: &load[3] };
    Ok(crate::rbac::authorize(attrs, &policy))
}

/// Where every RBAC object is stored (`/registry/rbac.authorization.k8s.io/<plural>/...`).
const RBAC_PREFIX: &[u8] = b"/registry/rbac.authorization.k8s.io/";

/// The RBAC objects as last read, valid until the apply path reports a change under
/// [`RBAC_PREFIX`]. The apply path announces every applied batch on this replica's broadcast
/// before any client is answered, so a request that follows an acknowledged RBAC write (through
/// any replica that has applied it) drains that announcement first and reloads. A lagged or
/// reset broadcast (snapshot install) also reloads. Upstream's authorizer reads from informers,
/// which lag further.
pub struct PolicyCache {
    state: tokio::sync::Mutex<PolicyState>,
}

struct PolicyState {
    changes: tokio::sync::broadcast::Receiver<raftstore::state_machine::HubMsg>,
    loaded: Option<Arc<Vec<Vec<Value>>>>,
}

impl PolicyCache {
    pub fn new(replica: &raftstore::replica::Replica) -> PolicyCache {
        PolicyCache { state: tokio::sync::Mutex::new(PolicyState { changes: replica.sm.subscribe(), loaded: None }) }
    }
}

impl PolicyState {
    /// Consumes the announcements so far; true if any of them may touch RBAC objects.
    fn drain_changed(&mut self) -> bool {
        use raftstore::state_machine::HubMsg;
        use tokio::sync::broadcast::error::TryRecvError;
        let mut changed = false;
        loop {
            match self.changes.try_recv() {
                Ok(HubMsg::Events(batch)) => changed |= batch.iter().flat_map(|r| r.events.iter()).any(|e| e.kv.key.starts_with(RBAC_PREFIX)),
                Ok(HubMsg::Reset) | Err(TryRecvError::Lagged(_)) => changed = true,
                Err(TryRecvError::Empty) => return changed,
                Err(TryRecvError::Closed) => return true,
            }
        }
    }
}

/// ClusterRoles, ClusterRoleBindings, Roles, RoleBindings (local reads; cached until one changes).
pub async fn load_policy(api: &Api) -> ApiResult<Arc<Vec<Vec<Value>>>> {
    let mut st = api.policy.state.lock().await;
    if st.drain_changed() {
        st.loaded = None;
    }
    if let Some(p) = &st.loaded {
        return Ok(p.clone());
    }
    // Read after draining: whatever changes later is announced and drained next time.
    let cat = api.catalog.get();
    let mut load = Vec::new();
    for plural in ["clusterroles", "clusterrolebindings", "roles", "rolebindings"] {
        let Some(r) = cat.lookup("rbac.authorization.k8s.io", "v1", plural) else {
            load.push(vec![]);
            continue;
        };
        let (start, end) = crate::store::collection_range(&r, None);
        let page = api.store.list(&start, &end, crate::store::Freshness::Any, 0, &|_| true).await?;
        load.push(page.items.into_iter().map(|(v, _)| v).collect());
    }
    let load = Arc::new(load);
    st.loaded = Some(load.clone());
    Ok(load)
}

/// RBAC escalation prevention: a role may only grant what its author holds (or the author may
/// `escalate`), a binding only a role whose permissions its author holds (or may `bind`).
pub async fn check_escalation(api: &Api, user: &User, res: &crate::catalog::ResourceDef, obj: &Value) -> ApiResult<()> {
    if user.is_master() || res.group != "rbac.authorization.k8s.io" {
        return Ok(());
    }
    let load = load_policy(api).await?;
    let policy = crate::rbac::Policy { cluster_roles: &load[0], cluster_role_bindings: &load[1], roles: &load[2], role_bindings: &load[3] };
    let ns = if res.namespaced { obj["metadata"]["namespace"].as_str().unwrap_or("").to_string() } else { String::new() };
    // `resource` may be "resource/subresource", as RBAC rules write it.
    let allowed = |verb: &str, group: &str, resource: &str, name: &str, namespace: &str, nonres: Option<&str>| {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let a = crate::rbac::Attributes {
            user: user.name.clone(),
            groups: user.groups.clone(),
            verb: verb.into(),
            resource_request: nonres.is_none(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: nonres.unwrap_or("").into(),
        };
        matches!(crate::rbac::authorize(&a, &policy), crate::rbac::Decision::Allow)
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let rules: Vec<Value> = match res.kind.as_str() {
        "Role" | "ClusterRole" => {
            if allowed("escalate", &res.group, &res.plural, name, &ns, None) {
                return Ok(());
            }
            obj["rules"].as_array().cloned().unwrap_or_default()
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role_kind = obj["roleRef"]["kind"].as_str().unwrap_or("");
            let role_name = obj["roleRef"]["name"].as_str().unwrap_or("");
            let plural = if role_kind == "Role" { "roles" } else { "clusterroles" };
            if allowed("bind", "rbac.authorization.k8s.io", plural, role_name, &ns, None) {
                return Ok(());
            }
            let pool: &[Value] = if role_kind == "Role" { &load[2] } else { &load[0] };
            pool.iter()
                .find(|r| r["metadata"]["name"] == role_name && (role_kind != "Role" || r["metadata"]["namespace"].as_str() == Some(ns.as_str())))
                .and_then(|r| r["rules"].as_array().cloned())
                .unwrap_or_default()
        }
        _ => return Ok(()),
    };
    let strs = |v: &Value| -> Vec<String> { v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default() };
    let mut missing = Vec::new();
    for rule in &rules {
        let verbs = strs(&rule["verbs"]);
        for url in strs(&rule["nonResourceURLs"]) {
            for v in &verbs {
                if !allowed(v, "", "", "", "", Some(&url)) {
                    missing.push(format!("{{NonResourceURLs:[\"{url}\"], Verbs:[\"{v}\"]}}"));
                }
            }
        }
        let names = strs(&rule["resourceNames"]);
        let names: Vec<String> = if names.is_empty() { vec![String::new()] } else { names };
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in &verbs {
                    for n in &names {
                        if !allowed(v, &g, &r, n, &ns, None) {
                            missing.push(format!("{{APIGroups:[\"{g}\"], Resources:[\"{r}\"], Verbs:[\"{v}\"]}}"));
                        }
                    }
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.dedup();
    let gr = res.gr();
    Err(ApiError::Forbidden {
        message: format!("{gr} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}", user.name, user.groups, missing.join("\n")),
        gr,
        name: name.to_string(),
    })
}

/// decide(), with a denial as 403 Forbidden. Decisions read this replica's state; a denial is
/// confirmed against the latest state first (a read barrier), so a binding just created through
/// another replica takes effect at once.
pub async fn check(api: &Api, attrs: &crate::rbac::Attributes) -> ApiResult<()> {
    let mut decision = decide(api, attrs).await?;
    if matches!(decision, crate::rbac::Decision::Deny(_)) {
        api.store.replica.read_barrier().await?;
        decision = decide(api, attrs).await?;
    }
    match decision {
        crate::rbac::Decision::Allow => Ok(()),
        crate::rbac::Decision::Deny(reason) => {
            let gr = crate::error::GroupResource { group: attrs.api_group.clone(), resource: attrs.resource.clone() };
            Err(ApiError::Forbidden { message: crate::rbac::forbidden_message(attrs, &reason), gr, name: attrs.name.clone() })
        }
    }
}

async fn resource_request(api: &Arc<Api>, req: &Request, group: &str, version: &str, rest: &[&str], verb_out: &mut String, resource_out: &mut String) -> ApiResult<Reply> {
    let cat = api.catalog.get();
    // /namespaces/NS/RES[/NAME[/SUB]] vs /RES[/NAME[/SUB]] (namespaces/NAME/status is the
    // namespace's own subresource).
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..] if group.is_empty() && !matches!(*plural, "status" | "finalize") || !group.is_empty() => {
            (Some(ns.to_string()), *plural, tail.first().map(|s| s.to_string()), tail.get(1).map(|s| s.to_string()))
        }
        [plural, tail @ ..] => (None, *plural, tail.first().map(|s| s.to_string()), tail.get(1).map(|s| s.to_string())),
        [] => return Err(ApiError::NoRoute),
    };
    if rest.len() > 5 || (ns.is_none() && rest.len() > 3) {
        return Err(ApiError::NoRoute);
    }
    let res = cat.lookup(group, version, plural).ok_or(ApiError::NoRoute)?;
    if ns.is_some() && !res.namespaced {
        return Err(ApiError::NoRoute);
    }
    if let Some(s) = &sub {
        if !res.has_sub(s) {
            return Err(ApiError::NoRoute);
        }
    }
    *resource_out = res.plural.clone();
    let t = Target { res: res.clone(), ns: ns.clone(), name: name.clone(), sub: sub.clone() };
    let watch = req.query.flag("watch");
    if watch && sub.is_some() {
        // Subresources cannot be watched (and must not leak the parent object).
        return Err(ApiError::MethodNotAllowed);
    }
    let verb = match (&req.method, &name) {
        (&Method::GET, None) if watch => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) if watch => "watch",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, None) => "create",
        (&Method::POST, Some(_)) if sub.is_some() => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, None) => "deletecollection",
        (&Method::DELETE, Some(_)) => "delete",
        _ => return Err(ApiError::MethodNotAllowed),
    };
    *verb_out = verb.to_string();
    // Streaming into a pod is a create whatever the method (a WebSocket upgrade is a GET).
    let authz_verb = match sub.as_deref() {
        Some("exec" | "attach" | "portforward") => "create",
        _ => verb,
    };
    if !req.user.is_master() {
        let attrs = crate::rbac::Attributes {
            user: req.user.name.clone(),
            groups: req.user.groups.clone(),
            verb: authz_verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: res.plural.clone(),
            subresource: sub.clone().unwrap_or_default(),
            namespace: ns.clone().unwrap_or_default(),
            name: name.clone().unwrap_or_default(),
            path: req.path.clone(),
        };
        if let Some(node) = crate::node_authz::node_name(&req.user.name, &req.user.groups) {
            api.authorize_node(&node, &attrs).await?;
        }
        check(api, &attrs).await?;
    }
    if res.is_review() {
        return match verb {
            "create" => api.review(req, &t).await,
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    match (verb, sub.as_deref()) {
        ("list", _) | ("watch", None) if name.is_none() => api.list(req, &t).await,
        ("watch", _) => api.watch(req, &t).await,
        ("get", None) | ("get", Some("status")) => api.get(req, &t).await,
        ("get", Some("scale")) => api.get_scale(&t).await,
        ("create", None) => api.create(req, &t).await,
        ("create", Some("binding")) => api.bind(req, &t).await,
        ("create", Some("eviction")) => api.evict(req, &t).await,
        ("create", Some("token")) => api.token_request(req, &t).await,
        ("update", None) | ("update", Some("status")) | ("update", Some("scale")) | ("update", Some("finalize")) => api.update(req, &t).await,
        ("patch", None) | ("patch", Some("status")) | ("patch", Some("scale")) => api.patch(req, &t).await,
        ("delete", None) => api.delete(req, &t).await,
        ("deletecollection", None) => api.delete_collection(req, &t).await,
        ("get", Some(s @ "log")) | ("get" | "create", Some(s @ ("exec" | "attach" | "portforward"))) => api.proxy_to_node(req, &t, s).await,
        _ => Err(ApiError::MethodNotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_names_namespace_lease_holder_and_epoch() {
        let f = parse_fence("kube-system/sched=n1@4").expect("a fence");
        assert_eq!((f.namespace.as_str(), f.lease.as_str(), f.holder.as_str(), f.epoch), ("kube-system", "sched", "n1", 4));
        // The epoch is what follows the last '@': a holder may contain one.
        let f = parse_fence("ns/l=host@domain@0").expect("a fence");
        assert_eq!((f.holder.as_str(), f.epoch), ("host@domain", 0));
        for bad in ["", "ns/l=n1", "ns/l=n1@", "ns/l=n1@x", "ns/l=@1", "ns/l=n1@-1", "l=n1@1", "/l=n1@1", "ns/=n1@1"] {
            assert!(matches!(parse_fence(bad), Err(ApiError::BadRequest(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_fenced_refusal_is_marked_for_the_client() {
        let gr = crate::error::GroupResource { group: "coordination.k8s.io".into(), resource: "leases".into() };
        let fenced = ApiError::Conflict { gr: gr.clone(), name: "l".into(), reason: "fenced: \"a\" no longer holds lease ns/l".into() };
        assert_eq!(error_response(&fenced).status(), StatusCode::CONFLICT);
        assert!(error_response(&fenced).headers().contains_key(FENCED_HEADER));
        let other = ApiError::Conflict { gr, name: "l".into(), reason: "the object has been modified".into() };
        assert!(!error_response(&other).headers().contains_key(FENCED_HEADER));
    }
}
