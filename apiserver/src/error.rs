//! API errors, and the one place they become Kubernetes `Status` objects.
//!
//! Messages follow apimachinery's `pkg/api/errors` wording because kubectl prints them verbatim
//! and users (and scripts) recognise them.

use raftstore::error::StoreError;
use serde_json::{json, Value};

/// Names a resource the way error messages do: `pods`, `deployments.apps`.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl std::fmt::Display for GroupResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// One field problem of a 422 Invalid.
#[derive(Clone, Debug, PartialEq)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: impl std::fmt::Display, detail: &str) -> Cause {
        let field = field.into();
        Cause { reason: "FieldValueInvalid", message: format!("Invalid value: {}: {detail}", quoted(&value.to_string())), field }
    }
    pub fn required(field: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueRequired", message: "Required value".into(), field: field.into() }
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
        Cause { reason: "FieldValueForbidden", message: format!("Forbidden: {detail}"), field: field.into() }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Cause {
        let list = supported.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        Cause { reason: "FieldValueNotSupported", message: format!("Unsupported value: \"{value}\": supported values: {list}"), field: field.into() }
    }
    pub fn immutable(field: impl Into<String>) -> Cause {
        Cause { reason: "FieldValueInvalid", message: "Invalid value: field is immutable".into(), field: field.into() }
    }
    pub fn duplicate(field: impl Into<String>, value: &str) -> Cause {
        Cause { reason: "FieldValueDuplicate", message: format!("Duplicate value: \"{value}\""), field: field.into() }
    }
}

/// Go's `%q` for a string (strconv.Quote), so that messages match upstream byte for byte.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quoted(v: &str) -> String {
    // Strings are shown quoted, numbers bare, as Go's %#v-ish formatting in field errors does.
    if v.parse::<f64>().is_ok() || v == "true" || v == "false" {
        v.to_string()
    } else {
        format!("\"{v}\"")
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{message}")]
    Forbidden { message: String, gr: GroupResource, name: String },
    #[error("{gr} \"{name}\" not found")]
    NotFound { gr: GroupResource, name: String },
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("{gr} \"{name}\" already exists")]
    AlreadyExists { gr: GroupResource, name: String },
    #[error("Operation cannot be fulfilled on {gr} \"{name}\": {reason}")]
    Conflict { gr: GroupResource, name: String, reason: String },
    /// A conflict whose message is complete as given (server-side apply).
    #[error("{message}")]
    ApplyConflict { gr: GroupResource, name: String, message: String, causes: Vec<Value> },
    #[error("{0}")]
    Gone(String),
    #[error("{}", invalid_text(.kind, .group, .name, .causes))]
    Invalid { kind: String, group: String, name: String, causes: Vec<Cause> },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("the request is too large")]
    TooLarge,
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Timeout(String),
    #[error("Too large resource version: {requested}, current: {current}")]
    ResourceVersionTooLarge { requested: i64, current: i64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

fn invalid_text(kind: &str, group: &str, name: &str, causes: &[Cause]) -> String {
    let what = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
    format!("{what} \"{name}\" is invalid: {}", causes_text(causes))
}

fn causes_text(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes.iter().map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) }).collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A write refused because the fence it carried no longer holds (see store::Fence).
    pub fn is_fenced(&self) -> bool {
        matches!(self, ApiError::Conflict { reason, .. } if reason.starts_with("fenced:"))
    }

    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden { .. } => 403,
            ApiError::NotFound { .. } | ApiError::NoRoute => 404,
            ApiError::MethodNotAllowed => 405,
            ApiError::NotAcceptable(_) => 406,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => 409,
            ApiError::Gone(_) => 410,
            ApiError::TooLarge => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid { .. } => 422,
            ApiError::TooManyRequests(_) => 429,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
            ApiError::Timeout(_) | ApiError::ResourceVersionTooLarge { .. } => 504,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::ApplyConflict { .. } => "Conflict",
            ApiError::Gone(_) => "Expired",
            ApiError::TooLarge => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::TooManyRequests(_) => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::Timeout(_) | ApiError::ResourceVersionTooLarge { .. } => "Timeout",
        }
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.to_string(), "reason": self.reason(), "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound { gr, name } | ApiError::AlreadyExists { gr, name } | ApiError::Conflict { gr, name, .. } | ApiError::Forbidden { gr, name, .. } => {
                let mut d = json!({"kind": gr.resource});
                if !name.is_empty() {
                    d["name"] = json!(name);
                }
                if !gr.group.is_empty() {
                    d["group"] = json!(gr.group);
                }
                Some(d)
            }
            ApiError::ApplyConflict { gr, name, causes, .. } => {
                let mut d = json!({"name": name, "kind": gr.resource, "causes": causes});
                if !gr.group.is_empty() {
                    d["group"] = json!(gr.group);
                }
                Some(d)
            }
            ApiError::Invalid { kind, group, name, causes } => {
                let causes: Vec<Value> = causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect();
                let mut d = json!({"name": name, "kind": kind, "causes": causes});
                if !group.is_empty() {
                    d["group"] = json!(group);
                }
                Some(d)
            }
            ApiError::ResourceVersionTooLarge { .. } => Some(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1})),
            ApiError::TooManyRequests(_) => Some(json!({"retryAfterSeconds": 10})),
            _ => None,
        };
        if let Some(d) = details {
            s["details"] = d;
        }
        s
    }

    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        ApiError::Invalid { kind: kind.into(), group: group.into(), name: name.into(), causes }
    }
}

/// Store failures as API errors. Compaction is 410 (the client relists); the rest say the store
/// could not answer, which is retryable.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        use raftstore::types::ApplyError;
        match e {
            StoreError::Apply(ApplyError::Compacted { .. }) => ApiError::Gone("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into()),
            StoreError::Apply(ApplyError::FutureRevision) => ApiError::Timeout("Too large resource version".into()),
            StoreError::TooLarge => ApiError::TooLarge,
            StoreError::Timeout => ApiError::Timeout("request timed out: the store did not answer in time (no quorum?)".into()),
            StoreError::NoLeader | StoreError::Unavailable(_) | StoreError::Stopped => ApiError::Unavailable(format!("storage unavailable: {e}")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_group_qualified_resource_and_details_carry_the_plural() {
        let e = ApiError::NotFound { gr: GroupResource { group: "apps".into(), resource: "deployments".into() }, name: "web".into() };
        let s = e.status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "deployments");
        assert_eq!(s["details"]["group"], "apps");
    }

    #[test]
    fn invalid_lists_each_cause_with_its_field() {
        let e = ApiError::invalid("Deployment", "apps", "x", vec![Cause::invalid("spec.replicas", -1, "must be greater than or equal to 0")]);
        assert_eq!(e.to_string(), "Deployment.apps \"x\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0");
        assert_eq!(e.status()["details"]["causes"][0]["field"], "spec.replicas");
        let core = ApiError::invalid("ConfigMap", "", "Bad_Name", vec![Cause::invalid("metadata.name", "Bad_Name", "a lowercase RFC 1123 subdomain")]);
        assert!(core.to_string().starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name"), "{core}");
    }
}
