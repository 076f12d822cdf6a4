//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`).
//!
//! Typed client-go clients (and kubectl's `create <kind>` generators) send objects this way. We
//! turn them into the same JSON a JSON client would have sent, so that everything after the
//! decoder sees one format.
//!
//! The message types come from the upstream `generated.proto` files, compiled by `build.rs` into
//! a descriptor set; bodies are decoded dynamically with prost-reflect and then walked into JSON
//! by hand, because Go's JSON form differs from protobuf's canonical JSON mapping: embedded
//! structs are inlined, a few field names differ, and Time, Quantity, IntOrString, RawExtension
//! and friends have custom JSON encodings.

use std::borrow::Cow;
use std::sync::OnceLock;

use base64::Engine as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage as _, Value as PValue};
use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

/// Prefix of every Kubernetes protobuf body (`k8s\0`).
const MAGIC: &[u8] = b"k8s\x00";

/// Bounds our own recursion (prost already refuses messages nested more than 100 deep; raw
/// extensions may carry another enveloped object, which restarts prost's count).
const MAX_DEPTH: usize = 128;

const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const VERBS: &str = "apimachinery.pkg.apis.meta.v1.Verbs";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const QUANTITY_VALUE: &str = "apimachinery.pkg.api.resource.QuantityValue";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";
const UNKNOWN: &str = "apimachinery.pkg.runtime.Unknown";
const APIEXTENSIONS: &str = "apiextensions_apiserver.pkg.apis.apiextensions.";

/// Proto packages are `<prefix>.<group label>.<version>`; the prefix depends on which repository
/// the group lives in.
const PACKAGE_PREFIXES: &[&str] =
    &["api", "apimachinery.pkg.apis", "apiextensions_apiserver.pkg.apis", "kube_aggregator.pkg.apis", "metrics.pkg.apis"];

/// Kinds every group version registers (metav1.AddToGroupVersion), sent with the group's own
/// apiVersion, e.g. DeleteOptions as `apps/v1`.
const META_KINDS: &[&str] =
    &["DeleteOptions", "ListOptions", "GetOptions", "CreateOptions", "UpdateOptions", "PatchOptions", "WatchEvent", "Status"];

/// Message-typed fields that are embedded (anonymous) structs in Go, so JSON flattens their
/// fields into the parent. The names are unique to these embeddings across the v1.33 protos
/// (`handler`/`rule` also exist as plain strings elsewhere, hence the message-type check).
const INLINED: &[&str] = &[
    "volumeSource",             // Volume
    "persistentVolumeSource",   // PersistentVolumeSpec
    "ephemeralContainerCommon", // EphemeralContainer
    "handler",                  // Probe (ProbeHandler)
    "localObjectReference",     // {ConfigMap,Secret}{KeySelector,EnvSource,Projection}, ConfigMapVolumeSource
    "ingressRuleValue",         // IngressRule
    "ruleWithOperations",       // NamedRuleWithOperations
    "rule",                     // RuleWithOperations (Rule)
    "deviceConfiguration",      // Device{Allocation,Claim,Class}Configuration
];

fn bad(msg: impl std::fmt::Display) -> ApiError {
    // Error texts from prost can span lines; the Status message should be one line.
    ApiError::BadRequest(msg.to_string().replace('\n', " "))
}

/// The descriptor pool, decoded once: the set is ~270 KB and decoding it takes milliseconds.
fn pool() -> ApiResult<&'static DescriptorPool> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"))[..]).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| ApiError::BadRequest(format!("protobuf descriptors unavailable: {e}")))
}

/// Decodes an `application/vnd.kubernetes.protobuf` body: 4 magic bytes `k8s\0`, then a
/// runtime.Unknown message {1: typeMeta{1: apiVersion, 2: kind}, 2: raw bytes (the object's
/// protobuf), 3: contentEncoding, 4: contentType}. Returns the object as JSON with apiVersion
/// and kind set from typeMeta. Errors: ApiError::BadRequest with a one-line message for a bad
/// envelope/malformed protobuf; ApiError::UnsupportedMediaType for a kind we have no message
/// type for.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    decode_at(body, 0)
}

fn decode_at(body: &[u8], depth: usize) -> ApiResult<Value> {
    let rest =
        body.strip_prefix(MAGIC).ok_or_else(|| bad("the protobuf body does not start with the Kubernetes magic prefix \"k8s\\x00\""))?;
    let pool = pool()?;
    let unknown_desc = pool.get_message_by_name(UNKNOWN).ok_or_else(|| bad("runtime.Unknown is not in the descriptor set"))?;
    let unknown = DynamicMessage::decode(unknown_desc, rest).map_err(|e| bad(format!("invalid protobuf envelope: {e}")))?;

    let type_meta = message_field(&unknown, "typeMeta");
    let api_version = type_meta.as_ref().map(|t| string_field(t, "apiVersion")).unwrap_or_default();
    let kind = type_meta.as_ref().map(|t| string_field(t, "kind")).unwrap_or_default();
    let raw = bytes_field(&unknown, "raw");
    let encoding = string_field(&unknown, "contentEncoding");
    let content_type = string_field(&unknown, "contentType");

    if !encoding.is_empty() {
        return Err(bad(format!("unsupported contentEncoding {encoding:?} in the protobuf envelope")));
    }
    if kind.is_empty() {
        return Err(bad("Object 'Kind' is missing in the protobuf body"));
    }
    if api_version.is_empty() {
        return Err(bad("Object 'apiVersion' is missing in the protobuf body"));
    }

    let mut obj = match content_type.as_str() {
        // The envelope may also wrap JSON (runtime.Unknown allows it); take it as is.
        "application/json" => {
            serde_json::from_slice::<Value>(&raw).map_err(|e| bad(format!("invalid JSON in the protobuf envelope: {e}")))?
        }
        "" | "application/vnd.kubernetes.protobuf" => {
            let desc = message_for(pool, &api_version, &kind).ok_or_else(|| {
                ApiError::UnsupportedMediaType(format!(
                    "the protobuf body has apiVersion {api_version:?}, kind {kind:?}, which this server cannot decode from protobuf; send it as application/json"
                ))
            })?;
            let msg = DynamicMessage::decode(desc, raw.as_slice()).map_err(|e| bad(format!("invalid protobuf body for {kind}: {e}")))?;
            message_json(&msg, depth + 1)?.unwrap_or_else(|| Value::Object(Map::new()))
        }
        other => return Err(bad(format!("unsupported contentType {other:?} in the protobuf envelope"))),
    };
    let Value::Object(map) = &mut obj else {
        return Err(bad(format!("the {kind} in the protobuf body is not an object")));
    };
    map.insert("apiVersion".into(), Value::String(api_version));
    map.insert("kind".into(), Value::String(kind));
    Ok(obj)
}

/// Finds the message for apiVersion + kind: group `rbac.authorization.k8s.io` / version `v1`
/// lives in package `api.rbac.v1`, the core group in `api.core.v1`, and so on.
fn message_for(pool: &DescriptorPool, api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let ident = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ident(kind) {
        return None;
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    if ident(version) {
        if let Some(label) = group_label(group) {
            for prefix in PACKAGE_PREFIXES {
                if let Some(d) = pool.get_message_by_name(&format!("{prefix}.{label}.{version}.{kind}")) {
                    return Some(d);
                }
            }
        }
    }
    if META_KINDS.contains(&kind) {
        return pool.get_message_by_name(&format!("apimachinery.pkg.apis.meta.v1.{kind}"));
    }
    None
}

/// The package label of a Kubernetes API group: its first DNS label, with the few exceptions
/// the protos spell differently. Only built-in groups (no dot, or `*.k8s.io`) qualify, so a
/// custom resource group like `apps.example.com` never matches a built-in type.
fn group_label(group: &str) -> Option<&str> {
    if group.is_empty() {
        return Some("core");
    }
    let name = if group.contains('.') { group.strip_suffix(".k8s.io")? } else { group };
    let label = match name {
        "internal.apiserver" => "apiserverinternal",
        "custom.metrics" => "custom_metrics",
        "external.metrics" => "external_metrics",
        "core" => return None,
        _ => name.split('.').next()?,
    };
    (!label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(label)
}

/// JSON for one message; None means "leave the field out" (Go's zero Time, an empty raw
/// extension).
fn message_json(msg: &DynamicMessage, depth: usize) -> ApiResult<Option<Value>> {
    if depth > MAX_DEPTH {
        return Err(bad("the protobuf body is nested too deeply"));
    }
    let desc = msg.descriptor();
    let full = desc.full_name();
    match full {
        TIME => {
            // Go's zero time encodes as an empty message and as null in JSON: drop it.
            let (s, n) = (int_field(msg, "seconds"), int_field(msg, "nanos"));
            return if s == 0 && n == 0 { Ok(None) } else { Ok(Some(Value::String(format_time(s, n, false)?))) };
        }
        MICRO_TIME => {
            let (s, n) = (int_field(msg, "seconds"), int_field(msg, "nanos"));
            return if s == 0 && n == 0 { Ok(None) } else { Ok(Some(Value::String(format_time(s, n, true)?))) };
        }
        DURATION => return Ok(Some(Value::String(format_duration(int_field(msg, "duration"))))),
        QUANTITY | QUANTITY_VALUE => return Ok(Some(Value::String(string_field(msg, "string")))),
        INT_OR_STRING => {
            return match int_field(msg, "type") {
                0 => Ok(Some(Value::from(int_field(msg, "intVal")))),
                1 => Ok(Some(Value::String(string_field(msg, "strVal")))),
                t => Err(bad(format!("invalid IntOrString type {t}"))),
            };
        }
        RAW_EXTENSION => return raw_json(&bytes_field(msg, "raw"), depth),
        FIELDS_V1 => return raw_json(&bytes_field(msg, "Raw"), depth),
        VERBS => return Ok(Some(list_json(msg, "items", depth)?)),
        _ => {}
    }
    let name = desc.name();
    if name == "ExtraValue" {
        // authentication/authorization/certificates ExtraValue is a []string in Go.
        return Ok(Some(list_json(msg, "items", depth)?));
    }
    if full.starts_with(APIEXTENSIONS) {
        // These unions marshal as whichever member is set (apiextensions' custom MarshalJSON).
        match name {
            "JSON" => return raw_json(&bytes_field(msg, "raw"), depth),
            "JSONSchemaPropsOrArray" => {
                if msg.has_field_by_name("jSONSchemas") {
                    return Ok(Some(list_json(msg, "jSONSchemas", depth)?));
                }
                return sub_message_json(msg, "schema", depth);
            }
            "JSONSchemaPropsOrBool" => {
                if msg.has_field_by_name("schema") {
                    return sub_message_json(msg, "schema", depth);
                }
                return Ok(Some(Value::Bool(msg.get_field_by_name("allows").and_then(|v| v.as_bool()).unwrap_or(false))));
            }
            "JSONSchemaPropsOrStringArray" => {
                if msg.has_field_by_name("property") {
                    return Ok(Some(list_json(msg, "property", depth)?));
                }
                return sub_message_json(msg, "schema", depth);
            }
            _ => {}
        }
    }
    let mut out = Map::new();
    object_fields(msg, &mut out, depth)?;
    Ok(Some(Value::Object(out)))
}

/// Writes the fields present on the wire into `out`, flattening embedded structs.
fn object_fields(msg: &DynamicMessage, out: &mut Map<String, Value>, depth: usize) -> ApiResult<()> {
    if depth > MAX_DEPTH {
        return Err(bad("the protobuf body is nested too deeply"));
    }
    let desc = msg.descriptor();
    let schema_props = desc.name() == "JSONSchemaProps" && desc.full_name().starts_with(APIEXTENSIONS);
    for (field, value) in msg.fields() {
        let name = field.name();
        if let PValue::Message(sub) = value {
            if INLINED.contains(&name) {
                object_fields(sub, out, depth + 1)?;
                continue;
            }
        }
        let converted = match value {
            // Go's omitempty drops "" from JSON. Known approximation: a pointer string set to ""
            // (e.g. storageClassName: "") is indistinguishable on the wire and is dropped too.
            PValue::String(s) if s.is_empty() => None,
            PValue::Message(sub) => message_json(sub, depth + 1)?,
            other => Some(value_json(other, depth)?),
        };
        if let Some(v) = converted {
            out.insert(json_name(name, schema_props).into_owned(), v);
        }
    }
    Ok(())
}

/// The Go JSON name for a proto field name; they agree except for these.
fn json_name(name: &str, schema_props: bool) -> Cow<'_, str> {
    match name {
        "uID" => "uid".into(),
        "aPIGroup" => "apiGroup".into(),
        // Go fields without json tags that go-to-protobuf kept capitalised but JSON lowercases
        // (admissionregistration). Others such as DaemonEndpoint.Port really are capitalised.
        "Webhooks" => "webhooks".into(),
        "Expression" => "expression".into(),
        "Name" => "name".into(),
        "ref" if schema_props => "$ref".into(),
        "schema" if schema_props => "$schema".into(),
        n if schema_props && n.starts_with("xKubernetes") => {
            // xKubernetesPreserveUnknownFields -> x-kubernetes-preserve-unknown-fields
            let mut s = String::with_capacity(n.len() + 8);
            for c in n.chars() {
                if c.is_ascii_uppercase() {
                    s.push('-');
                    s.push(c.to_ascii_lowercase());
                } else {
                    s.push(c);
                }
            }
            s.into()
        }
        n => n.into(),
    }
}

/// JSON for a value that is not a singular message field: lists, maps and scalars. Elements keep
/// empty strings (an `apiGroups: [""]` entry or a ConfigMap value "" is meaningful).
fn value_json(value: &PValue, depth: usize) -> ApiResult<Value> {
    Ok(match value {
        PValue::Bool(b) => Value::Bool(*b),
        PValue::I32(i) => Value::from(*i),
        PValue::I64(i) => Value::from(*i),
        PValue::U32(i) => Value::from(*i),
        PValue::U64(i) => Value::from(*i),
        PValue::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        PValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        PValue::String(s) => Value::String(s.clone()),
        // Go marshals []byte as standard base64.
        PValue::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => Value::from(*n),
        PValue::Message(m) => message_json(m, depth + 1)?.unwrap_or(Value::Null),
        PValue::List(items) => Value::Array(items.iter().map(|v| value_json(v, depth)).collect::<ApiResult<_>>()?),
        PValue::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(i) => i.to_string(),
                    MapKey::I64(i) => i.to_string(),
                    MapKey::U32(i) => i.to_string(),
                    MapKey::U64(i) => i.to_string(),
                };
                out.insert(key, value_json(v, depth)?);
            }
            Value::Object(out)
        }
    })
}

/// RawExtension / FieldsV1 / apiextensions JSON: the bytes are the embedded object's JSON (or,
/// from protobuf clients, possibly another `k8s\0` envelope).
fn raw_json(raw: &[u8], depth: usize) -> ApiResult<Option<Value>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.starts_with(MAGIC) {
        return decode_at(raw, depth + 1).map(Some);
    }
    serde_json::from_slice(raw).map(Some).map_err(|e| bad(format!("invalid embedded JSON in the protobuf body: {e}")))
}

fn list_json(msg: &DynamicMessage, field: &str, depth: usize) -> ApiResult<Value> {
    match msg.get_field_by_name(field) {
        Some(v) => value_json(&v, depth),
        None => Ok(Value::Array(Vec::new())),
    }
}

fn sub_message_json(msg: &DynamicMessage, field: &str, depth: usize) -> ApiResult<Option<Value>> {
    match message_field(msg, field) {
        Some(m) => message_json(&m, depth + 1),
        None => Ok(None),
    }
}

fn message_field(msg: &DynamicMessage, field: &str) -> Option<DynamicMessage> {
    if !msg.has_field_by_name(field) {
        return None;
    }
    msg.get_field_by_name(field).and_then(|v| v.as_message().cloned())
}

fn string_field(msg: &DynamicMessage, field: &str) -> String {
    msg.get_field_by_name(field).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn bytes_field(msg: &DynamicMessage, field: &str) -> Vec<u8> {
    msg.get_field_by_name(field).and_then(|v| v.as_bytes().map(|b| b.to_vec())).unwrap_or_default()
}

fn int_field(msg: &DynamicMessage, field: &str) -> i64 {
    match msg.get_field_by_name(field).as_deref() {
        Some(PValue::I64(i)) => *i,
        Some(PValue::I32(i)) => i64::from(*i),
        _ => 0,
    }
}

/// RFC 3339 in UTC as metav1.Time (whole seconds) or metav1.MicroTime (6 fractional digits)
/// marshal it.
fn format_time(seconds: i64, nanos: i64, micro: bool) -> ApiResult<String> {
    // Go's time.Unix normalises nanos outside [0, 1e9).
    let secs = seconds.checked_add(nanos.div_euclid(1_000_000_000)).ok_or_else(|| bad("timestamp out of range in the protobuf body"))?;
    let nanos = nanos.rem_euclid(1_000_000_000);
    // 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, the range RFC 3339 can express.
    if !(-62_167_219_200..=253_402_300_799).contains(&secs) {
        return Err(bad("timestamp out of range in the protobuf body"));
    }
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    Ok(if micro {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z", nanos / 1000)
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    })
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Go's time.Duration.String(): "1h0m0s", "1m30s", "1.5s", "300ms", "0s".
fn format_duration(ns: i64) -> String {
    let mut u = ns.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        let (unit, prec) = match u {
            0 => return "0s".into(),
            1..=999 => ("ns", 0),
            1_000..=999_999 => ("µs", 3),
            _ => ("ms", 6),
        };
        out.push_str(&frac(&mut u, prec));
        out.insert_str(0, &u.to_string());
        out.push_str(unit);
    } else {
        let f = frac(&mut u, 9);
        let (h, m, s) = (u / 3600, u / 60 % 60, u % 60);
        if h > 0 {
            out.push_str(&format!("{h}h{m}m"));
        } else if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&format!("{s}{f}s"));
    }
    if ns < 0 {
        out.insert(0, '-');
    }
    out
}

/// Splits off the lowest `prec` decimal digits of `u` as ".ddd" without trailing zeros ("" if
/// they are all zero), leaving the integer part in `u`.
fn frac(u: &mut u64, prec: u32) -> String {
    let p = 10u64.pow(prec);
    let f = *u % p;
    *u /= p;
    if f == 0 {
        return String::new();
    }
    let digits = format!("{f:0width$}", width = prec as usize);
    format!(".{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use prost_reflect::Kind;
    use serde_json::json;

    /// Builds a message from a proto-shaped JSON spec (proto field names; strings for string and
    /// bytes fields), so tests read like the wire content.
    fn build(desc: &MessageDescriptor, spec: &Value) -> DynamicMessage {
        let mut m = DynamicMessage::new(desc.clone());
        for (k, v) in spec.as_object().expect("spec is an object") {
            let f = desc.get_field_by_name(k).unwrap_or_else(|| panic!("no field {k} in {}", desc.full_name()));
            let val = if f.is_map() {
                let Kind::Message(entry) = f.kind() else { unreachable!() };
                let vk = entry.map_entry_value_field().kind();
                let map = v.as_object().unwrap().iter().map(|(k, v)| (MapKey::String(k.clone()), scalar(&vk, v))).collect();
                PValue::Map(map)
            } else if f.is_list() {
                PValue::List(v.as_array().unwrap().iter().map(|e| scalar(&f.kind(), e)).collect())
            } else {
                scalar(&f.kind(), v)
            };
            m.set_field(&f, val);
        }
        m
    }

    fn scalar(kind: &Kind, v: &Value) -> PValue {
        match kind {
            Kind::Message(d) => PValue::Message(build(d, v)),
            Kind::String => PValue::String(v.as_str().unwrap().into()),
            Kind::Bytes => PValue::Bytes(v.as_str().unwrap().as_bytes().to_vec().into()),
            Kind::Int32 => PValue::I32(v.as_i64().unwrap() as i32),
            Kind::Int64 => PValue::I64(v.as_i64().unwrap()),
            Kind::Bool => PValue::Bool(v.as_bool().unwrap()),
            k => panic!("unexpected kind {k:?}"),
        }
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let pool = pool().unwrap();
        let mut unknown = build(
            &pool.get_message_by_name(UNKNOWN).unwrap(),
            &json!({"typeMeta": {"apiVersion": api_version, "kind": kind}, "contentEncoding": "", "contentType": ""}),
        );
        unknown.set_field_by_name("raw", PValue::Bytes(raw.into()));
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    /// Encodes `spec` as the message for apiVersion/kind, wraps it in the envelope and decodes.
    fn roundtrip(api_version: &str, kind: &str, spec: Value) -> Value {
        let desc = message_for(pool().unwrap(), api_version, kind).unwrap();
        decode(&envelope(api_version, kind, build(&desc, &spec).encode_to_vec())).unwrap()
    }

    /// Proves the field names: parse with the k8s-openapi type (which ignores unknown fields),
    /// serialize again, and require every key we produced to survive.
    fn check_openapi<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) {
        let typed: T = serde_json::from_value(v.clone()).unwrap();
        let back = serde_json::to_value(&typed).unwrap();
        assert_subset(v, &back, "");
    }

    fn assert_subset(ours: &Value, theirs: &Value, path: &str) {
        match (ours, theirs) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in a {
                    let t = b.get(k).unwrap_or_else(|| panic!("{path}.{k} is not a field of the k8s-openapi type"));
                    assert_subset(v, t, &format!("{path}.{k}"));
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "{path}");
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert_subset(x, y, &format!("{path}[{i}]"));
                }
            }
            (a, b) => assert_eq!(a, b, "{path}"),
        }
    }

    /// k8s-openapi insists on TokenRequest's output-only status.expirationTimestamp, which Go
    /// clients send as the zero time (null); the status is ignored on create anyway.
    fn without_status(mut v: Value) -> Value {
        v.as_object_mut().unwrap().remove("status");
        v
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Go's ObjectMeta marshals every non-pointer field, so this is what kubectl puts on the wire
    /// for "name only".
    fn meta(name: &str) -> Value {
        json!({"name": name, "generateName": "", "namespace": "", "selfLink": "", "uid": "", "resourceVersion": "",
               "generation": 0, "creationTimestamp": {}})
    }

    #[test]
    fn namespace() {
        let v = roundtrip("v1", "Namespace", json!({"metadata": meta("foo"), "spec": {}, "status": {"phase": ""}}));
        let want = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo", "generation": 0}, "spec": {}, "status": {}});
        assert_eq!(v, want);
        check_openapi::<k8s_openapi::api::core::v1::Namespace>(&v);
    }

    // Bodies captured from kubectl v1.32 (`--server` pointed at a recording HTTP server), i.e.
    // real Go gogo-protobuf encodings, as hex.
    /// `kubectl create namespace foo`
    const NAMESPACE: &str = "6b3873000a0f0a02763112094e616d657370616365121b0a130a03666f6f12001a0022002a0032003800420012001a020a00\
        1a002200";
    /// `kubectl create configmap cm1 --from-literal=a=b --from-literal=empty=`
    const CONFIG_MAP: &str = "6b3873000a0f0a0276311209436f6e6669674d617012280a130a03636d3112001a0022002a0032003800420012060a016112\
        016212090a05656d70747912001a002200";
    /// `kubectl create secret generic s1 --from-literal=k=v`
    const SECRET: &str = "6b3873000a0c0a0276311206536563726574121e0a120a02733112001a0022002a0032003800420012060a016b1201761a00\
        1a002200";
    /// `kubectl create deployment d1 --image=nginx --replicas=2 --port=80`
    const DEPLOYMENT: &str = "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412b4010a1d0a02643112001a0022002a00320038004200\
        5a090a03617070120264311284010802120b0a090a03617070120264311a6b0a1b0a0012001a0022002a003200380042005a\
        090a0361707012026431124c122e0a056e67696e7812056e67696e782a00320a0a001000185022002a0042006a0072008001\
        00880100900100a201001a00320042004a0052005800600068008201008a01009a0100c2010022020a00280038001a0c0800\
        100018002000280038001a002200";
    /// `kubectl create service clusterip svc1 --tcp=80:8080`
    const SERVICE: &str = "6b3873000a0d0a027631120753657276696365126c0a210a047376633112001a0022002a003200380042005a0b0a03617070\
        12047376633112430a1b0a0738302d38303830120354435018502207080010903f1a002800120b0a03617070120473766331\
        1a002209436c757374657249503a00420052005a00600068001a020a001a002200";
    /// `kubectl create rolebinding rb1 --role=r1 --user=bob --serviceaccount=default:sa`
    const ROLE_BINDING: &str = "6b3873000a2b0a1c726261632e617574686f72697a6174696f6e2e6b38732e696f2f7631120b526f6c6542696e64696e6712\
        87010a130a0372623112001a0022002a0032003800420012280a04557365721219726261632e617574686f72697a6174696f\
        6e2e6b38732e696f1a03626f622200121f0a0e536572766963654163636f756e7412001a027361220764656661756c741a25\
        0a19726261632e617574686f72697a6174696f6e2e6b38732e696f1204526f6c651a0272311a002200";
    /// `kubectl create token default --duration=1h`
    const TOKEN_REQUEST: &str = "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e52657175657374121d0a10\
        0a0012001a0022002a00320038004200120320901c1a040a0012001a002200";
    /// `kubectl auth can-i get pods --subresource=log -n ns1`
    const SSAR: &str = "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374416363657373\
        526576696577123b0a100a0012001a0022002a00320038004200121d0a1b0a036e733112036765741a0022002a04706f6473\
        32036c6f673a001a08080012001a0020001a002200";

    #[test]
    fn kubectl_captures() {
        let d = |h: &str| decode(&hex(h)).unwrap();
        let m = |name: &str| json!({"name": name, "generation": 0});
        let empty = json!({"generation": 0});
        let v = d(NAMESPACE);
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": m("foo"), "spec": {}, "status": {}}));
        check_openapi::<k8s_openapi::api::core::v1::Namespace>(&v);
        let v = d(CONFIG_MAP);
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": m("cm1"), "data": {"a": "b", "empty": ""}}));
        check_openapi::<k8s_openapi::api::core::v1::ConfigMap>(&v);
        let v = d(SECRET);
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "Secret", "metadata": m("s1"), "data": {"k": "dg=="}}));
        check_openapi::<k8s_openapi::api::core::v1::Secret>(&v);
        let v = d(DEPLOYMENT);
        check_openapi::<k8s_openapi::api::apps::v1::Deployment>(&v);
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(v["spec"]["selector"], json!({"matchLabels": {"app": "d1"}}));
        assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["image"], "nginx");
        assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
        let v = d(SERVICE);
        check_openapi::<k8s_openapi::api::core::v1::Service>(&v);
        assert_eq!(v["spec"]["ports"], json!([{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 0}]));
        assert_eq!(v["spec"]["type"], "ClusterIP");
        let v = d(ROLE_BINDING);
        check_openapi::<k8s_openapi::api::rbac::v1::RoleBinding>(&v);
        assert_eq!(
            v["subjects"],
            json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"},
                                        {"kind": "ServiceAccount", "name": "sa", "namespace": "default"}])
        );
        assert_eq!(v["roleRef"], json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r1"}));
        let v = d(TOKEN_REQUEST);
        assert_eq!(
            v,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": empty,
                             "spec": {"expirationSeconds": 3600}, "status": {}})
        );
        check_openapi::<k8s_openapi::api::authentication::v1::TokenRequest>(&without_status(v));
        let v = d(SSAR);
        assert_eq!(v["spec"], json!({"resourceAttributes": {"namespace": "ns1", "verb": "get", "resource": "pods", "subresource": "log"}}));
        check_openapi::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>(&v);
    }

    #[test]
    fn service_target_port_int() {
        let v = roundtrip(
            "v1",
            "Service",
            json!({"metadata": meta("svc"), "spec": {"type": "ClusterIP", "selector": {"app": "web"},
                   "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": {"type": 0, "intVal": 8080}}]}}),
        );
        let want = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "generation": 0},
                          "spec": {"type": "ClusterIP", "selector": {"app": "web"},
                                   "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}});
        assert_eq!(v, want);
        check_openapi::<k8s_openapi::api::core::v1::Service>(&v);
    }

    #[test]
    fn role() {
        let v = roundtrip(
            "rbac.authorization.k8s.io/v1",
            "Role",
            json!({"metadata": meta("r"), "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        let want = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "generation": 0},
                          "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]});
        assert_eq!(v, want);
        check_openapi::<k8s_openapi::api::rbac::v1::Role>(&v);
    }

    #[test]
    fn role_binding() {
        let v = roundtrip(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            json!({"metadata": meta("rb"),
                   "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob", "namespace": ""},
                                {"kind": "ServiceAccount", "apiGroup": "", "name": "sa", "namespace": "default"}],
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}}),
        );
        let want = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "rb", "generation": 0},
                          "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"},
                                       {"kind": "ServiceAccount", "name": "sa", "namespace": "default"}],
                          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}});
        assert_eq!(v, want);
        check_openapi::<k8s_openapi::api::rbac::v1::RoleBinding>(&v);
    }

    #[test]
    fn renamed_fields() {
        let v = roundtrip(
            "networking.k8s.io/v1",
            "IngressClass",
            json!({"metadata": meta("ic"), "spec": {"controller": "x/y", "parameters": {"aPIGroup": "k8s.example.com", "kind": "P", "name": "p"}}}),
        );
        assert_eq!(v["spec"]["parameters"], json!({"apiGroup": "k8s.example.com", "kind": "P", "name": "p"}));
        check_openapi::<k8s_openapi::api::networking::v1::IngressClass>(&v);

        let v = roundtrip(
            "admissionregistration.k8s.io/v1",
            "ValidatingWebhookConfiguration",
            json!({"metadata": meta("w"), "Webhooks": [{"name": "w.example.com", "sideEffects": "None",
                   "admissionReviewVersions": ["v1"], "clientConfig": {"url": "https://x"},
                   "rules": [{"operations": ["CREATE"], "rule": {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "*"}}]}]}),
        );
        assert_eq!(
            v["webhooks"][0]["rules"][0],
            json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "*"})
        );
        check_openapi::<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>(&v);
    }

    #[test]
    fn crd_schema() {
        let v = roundtrip(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            json!({"metadata": meta("foos.example.com"), "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "foos", "kind": "Foo"},
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object", "xKubernetesPreserveUnknownFields": true,
                    "properties": {"spec": {"type": "array", "items": {"schema": {"type": "string", "default": {"raw": "\"x\""}}},
                                            "xKubernetesListType": "atomic"},
                                   "extra": {"additionalProperties": {"allows": true}, "ref": "#/r"}}}}}]}}),
        );
        let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(
            schema,
            &json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"spec": {"type": "array", "items": {"type": "string", "default": "x"}, "x-kubernetes-list-type": "atomic"},
                                   "extra": {"additionalProperties": true, "$ref": "#/r"}}})
        );
        check_openapi::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(&v);
    }

    #[test]
    fn delete_options() {
        for av in ["v1", "meta.k8s.io/v1", "apps/v1"] {
            let v = roundtrip(av, "DeleteOptions", json!({"gracePeriodSeconds": 0, "propagationPolicy": "Foreground", "dryRun": ["All"]}));
            assert_eq!(
                v,
                json!({"apiVersion": av, "kind": "DeleteOptions", "gracePeriodSeconds": 0, "propagationPolicy": "Foreground", "dryRun": ["All"]})
            );
            check_openapi::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(&v);
        }
        let v = roundtrip("policy/v1", "Eviction", json!({"metadata": meta("p"), "deleteOptions": {"gracePeriodSeconds": 5}}));
        assert_eq!(v["deleteOptions"], json!({"gracePeriodSeconds": 5}));
        check_openapi::<k8s_openapi::api::policy::v1::Eviction>(&v);
    }

    #[test]
    fn self_subject_access_review() {
        let v = roundtrip(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            json!({"metadata": meta(""), "spec": {"resourceAttributes": {"namespace": "ns1", "verb": "get", "group": "", "resource": "pods", "subresource": "log"}},
                   "status": {"allowed": false}}),
        );
        let want = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "metadata": {"generation": 0},
                          "spec": {"resourceAttributes": {"namespace": "ns1", "verb": "get", "resource": "pods", "subresource": "log"}},
                          "status": {"allowed": false}});
        assert_eq!(v, want);
        check_openapi::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>(&v);

        let v = roundtrip(
            "authorization.k8s.io/v1",
            "SubjectAccessReview",
            json!({"spec": {"user": "u", "extra": {"scopes": {"items": ["a", "b"]}}, "nonResourceAttributes": {"path": "/x", "verb": "get"}}}),
        );
        assert_eq!(
            v["spec"],
            json!({"user": "u", "extra": {"scopes": ["a", "b"]}, "nonResourceAttributes": {"path": "/x", "verb": "get"}})
        );
        check_openapi::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(&v);
    }

    #[test]
    fn token_request() {
        let v = roundtrip(
            "authentication.k8s.io/v1",
            "TokenRequest",
            json!({"metadata": meta(""), "spec": {"expirationSeconds": 3600, "boundObjectRef": {"kind": "Pod", "name": "p", "uID": "u-1"}},
                   "status": {"token": "", "expirationTimestamp": {}}}),
        );
        let want = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {"generation": 0},
                          "spec": {"expirationSeconds": 3600, "boundObjectRef": {"kind": "Pod", "name": "p", "uid": "u-1"}}, "status": {}});
        assert_eq!(v, want);
        check_openapi::<k8s_openapi::api::authentication::v1::TokenRequest>(&without_status(v));
    }

    #[test]
    fn times_and_durations() {
        let v = roundtrip(
            "coordination.k8s.io/v1",
            "Lease",
            json!({"metadata": {"name": "l", "creationTimestamp": {"seconds": 1_700_000_000}},
                   "spec": {"holderIdentity": "h", "acquireTime": {"seconds": 1_700_000_001, "nanos": 123_456_789}, "renewTime": {"seconds": 0, "nanos": 0}}}),
        );
        assert_eq!(v["metadata"]["creationTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["spec"], json!({"holderIdentity": "h", "acquireTime": "2023-11-14T22:13:21.123456Z"}));
        check_openapi::<k8s_openapi::api::coordination::v1::Lease>(&v);

        assert_eq!(format_time(0, 0, false).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(-1, 0, false).unwrap(), "1969-12-31T23:59:59Z");
        assert_eq!(format_time(951_782_400, 0, false).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(-62_135_596_800, 0, false).unwrap(), "0001-01-01T00:00:00Z");
        assert!(format_time(i64::MAX, 0, false).is_err());
        assert!(format_time(i64::MAX, i64::MAX, true).is_err());

        for (ns, s) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (300_000_000, "300ms"),
            (1_500_000_000, "1.5s"),
            (30_000_000_000, "30s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (-5_000_000_000, "-5s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ] {
            assert_eq!(format_duration(ns), s, "{ns}");
        }
        let v = roundtrip("apps/v1", "DaemonSet", json!({"metadata": {"name": "d"}}));
        assert_eq!(v, json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"}}));
    }

    #[test]
    fn inlined_volume_sources() {
        let v = roundtrip(
            "v1",
            "PersistentVolume",
            json!({"metadata": {"name": "pv"}, "spec": {"capacity": {"storage": {"string": "1Gi"}}, "accessModes": ["ReadWriteOnce"],
                   "persistentVolumeSource": {"hostPath": {"path": "/data"}}, "storageClassName": "fast"}}),
        );
        assert_eq!(
            v["spec"],
            json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/data"}, "storageClassName": "fast"})
        );
        check_openapi::<k8s_openapi::api::core::v1::PersistentVolume>(&v);
    }

    #[test]
    fn raw_extensions() {
        let v = roundtrip(
            "apps/v1",
            "ControllerRevision",
            json!({"metadata": {"name": "cr", "managedFields": [{"manager": "m", "fieldsType": "FieldsV1", "fieldsV1": {"Raw": "{\"f:data\":{}}"}}]},
                   "data": {"raw": "{\"a\":1}"}, "revision": 2}),
        );
        assert_eq!(v["data"], json!({"a": 1}));
        assert_eq!(v["metadata"]["managedFields"][0]["fieldsV1"], json!({"f:data": {}}));
        check_openapi::<k8s_openapi::api::apps::v1::ControllerRevision>(&v);

        let pool = pool().unwrap();
        let desc = pool.get_message_by_name("api.apps.v1.ControllerRevision").unwrap();
        let body = envelope("apps/v1", "ControllerRevision", build(&desc, &json!({"data": {"raw": "{not json"}})).encode_to_vec());
        assert!(matches!(decode(&body), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn errors() {
        assert!(matches!(decode(b""), Err(ApiError::BadRequest(_))));
        assert!(matches!(decode(b"{\"kind\":\"Pod\"}"), Err(ApiError::BadRequest(_))));
        let good = envelope(
            "v1",
            "ConfigMap",
            build(
                &pool().unwrap().get_message_by_name("api.core.v1.ConfigMap").unwrap(),
                &json!({"metadata": meta("cm"), "data": {"a": "b"}}),
            )
            .encode_to_vec(),
        );
        // Every truncation is either a clean error or (cut at a field boundary) a valid prefix.
        for n in 0..good.len() {
            let _ = decode(&good[..n]);
        }
        let truncated = envelope("v1", "ConfigMap", vec![0x0a, 0x10, 0x0a]);
        match decode(&truncated) {
            Err(ApiError::BadRequest(m)) => assert!(!m.contains('\n'), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decode(&good[..good.len() - 3]), Err(ApiError::BadRequest(_))));
        for (av, kind) in
            [("v1", "Frobnicator"), ("example.com/v1", "Foo"), ("apps.example.com/v1", "Deployment"), ("apps/v1", "api.core.v1.Pod")]
        {
            assert!(matches!(decode(&envelope(av, kind, vec![])), Err(ApiError::UnsupportedMediaType(_))), "{av} {kind}");
        }
        assert!(matches!(decode(&envelope("v1", "", vec![])), Err(ApiError::BadRequest(_))));
        // Invalid IntOrString type.
        let svc = pool().unwrap().get_message_by_name("api.core.v1.Service").unwrap();
        let body = envelope("v1", "Service", build(&svc, &json!({"spec": {"ports": [{"targetPort": {"type": 7}}]}})).encode_to_vec());
        assert!(matches!(decode(&body), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn garbage_never_panics() {
        // Cheap deterministic fuzz: random bytes after the magic, and bit flips of a real body.
        let base = hex(DEPLOYMENT);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut b = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % b.len();
                b[i] ^= 1 << (next() % 8);
            }
            let _ = decode(&b);
            let len = (next() % 64) as usize;
            let mut r = MAGIC.to_vec();
            r.extend((0..len).map(|_| next() as u8));
            let _ = decode(&r);
        }
    }

    #[test]
    fn deep_nesting_is_rejected() {
        // RawExtension bodies that nest envelopes recurse through decode_at; the depth cap stops them.
        let pool = pool().unwrap();
        let desc = pool.get_message_by_name("api.apps.v1.ControllerRevision").unwrap();
        let mut body = envelope("v1", "ConfigMap", vec![]);
        for _ in 0..200 {
            let mut m = DynamicMessage::new(desc.clone());
            let mut data = DynamicMessage::new(pool.get_message_by_name(RAW_EXTENSION).unwrap());
            data.set_field_by_name("raw", PValue::Bytes(body.into()));
            m.set_field_by_name("data", PValue::Message(data));
            body = envelope("apps/v1", "ControllerRevision", m.encode_to_vec());
        }
        match decode(&body) {
            Err(ApiError::BadRequest(m)) => assert!(m.contains("nested too deeply"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kind_mapping() {
        let pool = pool().unwrap();
        for (av, kind, want) in [
            ("v1", "Pod", "api.core.v1.Pod"),
            ("apps/v1", "Deployment", "api.apps.v1.Deployment"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole", "api.rbac.v1.ClusterRole"),
            ("authorization.k8s.io/v1", "SubjectAccessReview", "api.authorization.v1.SubjectAccessReview"),
            ("authentication.k8s.io/v1", "TokenReview", "api.authentication.v1.TokenReview"),
            ("policy/v1", "Eviction", "api.policy.v1.Eviction"),
            ("networking.k8s.io/v1", "NetworkPolicy", "api.networking.v1.NetworkPolicy"),
            ("storage.k8s.io/v1", "StorageClass", "api.storage.v1.StorageClass"),
            ("coordination.k8s.io/v1", "Lease", "api.coordination.v1.Lease"),
            ("discovery.k8s.io/v1", "EndpointSlice", "api.discovery.v1.EndpointSlice"),
            ("events.k8s.io/v1", "Event", "api.events.v1.Event"),
            ("scheduling.k8s.io/v1", "PriorityClass", "api.scheduling.v1.PriorityClass"),
            ("batch/v1", "CronJob", "api.batch.v1.CronJob"),
            ("autoscaling/v1", "Scale", "api.autoscaling.v1.Scale"),
            ("autoscaling/v2", "HorizontalPodAutoscaler", "api.autoscaling.v2.HorizontalPodAutoscaler"),
            ("flowcontrol.apiserver.k8s.io/v1", "FlowSchema", "api.flowcontrol.v1.FlowSchema"),
            ("internal.apiserver.k8s.io/v1alpha1", "StorageVersion", "api.apiserverinternal.v1alpha1.StorageVersion"),
            (
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "apiextensions_apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition",
            ),
            ("apiregistration.k8s.io/v1", "APIService", "kube_aggregator.pkg.apis.apiregistration.v1.APIService"),
            ("meta.k8s.io/v1", "PartialObjectMetadata", "apimachinery.pkg.apis.meta.v1.PartialObjectMetadata"),
            ("v1", "DeleteOptions", "apimachinery.pkg.apis.meta.v1.DeleteOptions"),
            ("example.com/v1", "DeleteOptions", "apimachinery.pkg.apis.meta.v1.DeleteOptions"),
            ("custom.metrics.k8s.io/v1beta2", "MetricValueList", "metrics.pkg.apis.custom_metrics.v1beta2.MetricValueList"),
        ] {
            assert_eq!(message_for(pool, av, kind).map(|d| d.full_name().to_string()).as_deref(), Some(want), "{av} {kind}");
        }
    }
}
