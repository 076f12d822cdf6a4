//! One API request as the handlers see it: who sent it, its query, headers and body, and what
//! comes back (a JSON reply or a stream).

use std::collections::HashMap;

use bytes::Bytes;
use hyper::HeaderMap;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// The authenticated caller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// Query parameters (repeated keys kept in order, e.g. exec's `command`).
#[derive(Clone, Debug, Default)]
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        Query(q.map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()).unwrap_or_default())
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
    }
    pub fn all(&self, k: &str) -> Vec<&str> {
        self.0.iter().filter(|(key, _)| key == k).map(|(_, v)| v.as_str()).collect()
    }
    /// `true`, `1` (and `True`) are true; anything else, or absent, is false.
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1") | Some("True"))
    }
    pub fn int(&self, k: &str) -> ApiResult<Option<i64>> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| ApiError::BadRequest(format!("invalid value for {k}: {v:?} is not an integer"))),
        }
    }
}

pub struct Request {
    pub method: hyper::Method,
    pub path: String,
    pub query: Query,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub user: User,
    /// The connection upgrade (exec, attach, port-forward), taken by the proxy.
    pub upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Accept asks for metadata only: meta.k8s.io PartialObjectMetadata (get, watch) or
    /// PartialObjectMetadataList (list), what metadata informers (a garbage collector's) read.
    pub fn wants_metadata(&self) -> bool {
        self.header("accept").map(|a| a.split(',').any(|part| part.contains("as=PartialObjectMetadata") && part.contains("g=meta.k8s.io"))).unwrap_or(false)
    }

    /// Whether the client asked for server-side printing.
    pub fn wants_table(&self) -> bool {
        self.header("accept").map(|a| a.split(',').any(|part| part.contains("as=Table"))).unwrap_or(false)
    }
    pub fn content_type(&self) -> String {
        self.header("content-type").map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).unwrap_or_default()
    }
}

/// What a handler answers.
pub enum Reply {
    /// A finished HTTP response from elsewhere (the node), passed through as is.
    Proxied(hyper::Response<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>),
    Json { code: u16, body: Value, warnings: Vec<String>, headers: HashMap<&'static str, String> },
    /// A streamed body (watch, logs): chunks as they come.
    Stream { content_type: &'static str, rx: tokio::sync::mpsc::Receiver<Bytes> },
    Raw { code: u16, content_type: &'static str, body: Bytes, headers: HashMap<&'static str, String> },
    /// A stored object with its resourceVersion, serialized without a copy of it.
    Object { code: u16, obj: crate::store::Written, warnings: Vec<String> },
}

impl Reply {
    pub fn ok(body: Value) -> Reply {
        Reply::Json { code: 200, body, warnings: vec![], headers: HashMap::new() }
    }
    pub fn object(code: u16, obj: crate::store::Written) -> Reply {
        Reply::Object { code, obj, warnings: vec![] }
    }
    pub fn code(code: u16, body: Value) -> Reply {
        Reply::Json { code, body, warnings: vec![], headers: HashMap::new() }
    }
    pub fn with_warnings(mut self, w: Vec<String>) -> Reply {
        if let Reply::Json { warnings, .. } | Reply::Object { warnings, .. } = &mut self {
            warnings.extend(w);
        }
        self
    }
}

/// Parses a request body as JSON or YAML (no Content-Type = JSON, as client-go's scale sends).
pub fn decode_body(req: &Request) -> ApiResult<Value> {
    let ct = req.content_type();
    if req.body.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    match ct.as_str() {
        "" | "application/json" | "application/merge-patch+json" | "application/json-patch+json" | "application/strategic-merge-patch+json" | "*/*" => {
            serde_json::from_slice(&req.body).map_err(|e| ApiError::BadRequest(format!("the body of the request is not valid JSON: {e}")))
        }
        "application/yaml" | "application/apply-patch+yaml" | "text/yaml" | "application/x-yaml" => serde_yaml::from_slice::<Value>(&req.body)
            .map_err(|e| ApiError::BadRequest(format!("the body of the request is not valid YAML: {e}"))),
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(&req.body),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"
        ))),
    }
}

/// Duplicate keys in a JSON document, as dotted paths. serde_json keeps the last value silently;
/// Strict validation must refuse them.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    struct Walk<'a> {
        path: String,
        out: &'a mut Vec<String>,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                let p = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
                if !seen.insert(k) {
                    self.out.push(p.clone());
                }
                m.next_value_seed(Walk { path: p, out: self.out })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            let mut i = 0;
            while s.next_element_seed(Walk { path: format!("{}[{i}]", self.path), out: self.out })?.is_some() {
                i += 1;
            }
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
    }
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Walk { path: String::new(), out: &mut out }.deserialize(&mut de);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        let d = duplicate_fields(br#"{"metadata":{"name":"a","name":"b"},"spec":{"x":[{"k":1,"k":2}]}}"#);
        assert_eq!(d, vec!["metadata.name".to_string(), "spec.x[0].k".to_string()]);
        assert!(duplicate_fields(br#"{"a":1}"#).is_empty());
    }

    #[test]
    fn query_flags_accept_true_and_1() {
        let q = Query::parse(Some("watch=1&stdin=true&tty=false&command=ls&command=%2F"));
        assert!(q.flag("watch") && q.flag("stdin") && !q.flag("tty"));
        assert_eq!(q.all("command"), vec!["ls", "/"]);
    }
}
