//! Custom resources against a CRD version's `schema.openAPIV3Schema`
//! (apiextensions.k8s.io/v1 structural schemas): pruning of unknown fields,
//! defaulting, validation, a structural-schema check for the CRD itself, and
//! the cell values of `additionalPrinterColumns`.
//!
//! Behaviour and messages follow the upstream apiextensions-apiserver (schema
//! pruning/defaulting and kube-openapi validation as converted to
//! `field.Error`s). Deliberately not supported: `pattern` (no regex engine in
//! this crate's dependencies, so patterns are accepted unchecked), `format`
//! (except int-or-string, carried by `x-kubernetes-int-or-string`) and CEL
//! rules (`x-kubernetes-validations`).
//!
//! Nothing here panics on any input; recursion is capped at [`MAX_DEPTH`]
//! schema levels so that hostile schemas cannot overflow the stack.

use crate::error::go_quote;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Number, Value};

/// Deepest schema nesting any function here follows.
pub const MAX_DEPTH: usize = 100;

const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";
const EMBEDDED: &str = "x-kubernetes-embedded-resource";
const INT_OR_STRING: &str = "x-kubernetes-int-or-string";
const LIST_TYPE: &str = "x-kubernetes-list-type";
const LIST_MAP_KEYS: &str = "x-kubernetes-list-map-keys";

/// One validation failure, shaped like an upstream `field.Error`, ready for a
/// StatusCause. Display gives upstream's `field: message` line.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// FieldValueRequired, FieldValueInvalid, FieldValueTypeInvalid,
    /// FieldValueNotSupported, FieldValueTooLong, FieldValueTooMany or
    /// FieldValueDuplicate.
    pub reason: &'static str,
    /// Dotted path with `[i]` for list items, e.g. `spec.items[0].name`.
    pub field: String,
    /// The error body without the field, e.g. `Required value`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl FieldError {
    fn new(reason: &'static str, field: &str, message: String) -> Self {
        FieldError {
            reason,
            field: field.to_string(),
            message,
        }
    }

    fn required(field: &str) -> Self {
        Self::new("FieldValueRequired", field, "Required value".to_string())
    }

    /// `value` is already rendered the way Go's ErrorBody renders it.
    fn invalid(field: &str, value: &str, detail: &str) -> Self {
        Self::new("FieldValueInvalid", field, format!("Invalid value: {value}: {detail}"))
    }

    fn type_invalid(field: &str, want: &str, got: &str) -> Self {
        let got = go_quote(got);
        let detail = format!("{} in body must be of type {want}: {got}", name_of(field));
        Self::new(
            "FieldValueTypeInvalid",
            field,
            format!("Invalid value: {got}: {detail}"),
        )
    }

    fn not_supported(field: &str, value: &Value, allowed: &[Value]) -> Self {
        let list: Vec<String> = allowed
            .iter()
            .map(|a| match a {
                Value::String(s) => go_quote(s),
                other => go_quote(&other.to_string()),
            })
            .collect();
        let mut message = format!("Unsupported value: {}", render(value));
        if !list.is_empty() {
            message.push_str(": supported values: ");
            message.push_str(&list.join(", "));
        }
        Self::new("FieldValueNotSupported", field, message)
    }

    fn too_long(field: &str, max: u64) -> Self {
        let unit = if max == 1 { "byte" } else { "bytes" };
        Self::new(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} {unit}"),
        )
    }

    fn too_many(field: &str, actual: usize, max: u64) -> Self {
        Self::new(
            "FieldValueTooMany",
            field,
            format!("Too many: {actual}: must have at most {max} items"),
        )
    }

    fn duplicate(field: &str, value: &Value) -> Self {
        Self::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {}", render(value)),
        )
    }

    /// Upstream reports junctor (allOf/anyOf/oneOf/not) failures as
    /// `Invalid value: ""` with the quoted path inside the detail.
    fn composite(field: &str, detail: String) -> Self {
        Self::invalid(field, "\"\"", &detail)
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn flag(s: &Map<String, Value>, key: &str) -> bool {
    matches!(s.get(key), Some(Value::Bool(true)))
}

fn is_reserved(key: &str) -> bool {
    matches!(key, "apiVersion" | "kind" | "metadata")
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The name kube-openapi puts before "in body".
fn name_of(path: &str) -> &str {
    if path.is_empty() {
        "<root>"
    } else {
        path
    }
}

fn type_str(s: &Map<String, Value>) -> &str {
    s.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Non-negative integer keyword (minLength, maxItems, ...), tolerating `5.0`.
fn count_of(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    if let Some(u) = v.as_u64() {
        return Some(u);
    }
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f < 1.8e19).then_some(f as u64)
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => number_is_integral(n),
        _ => false,
    }
}

fn number_is_integral(n: &Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

/// The type name kube-openapi reports for a value.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if number_is_integral(n) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        // Unknown type names are a schema problem (check_structural), not the object's.
        _ => true,
    }
}

/// Go's `%v` for a float64 (shortest digits, exponent outside [1e-4, 1e6)).
fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{f:e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return format!("{f}");
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..6).contains(&exp) {
        format!("{f}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

fn go_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        n.as_f64().map(go_float).unwrap_or_else(|| n.to_string())
    }
}

/// A bad value the way upstream's ErrorBody prints it (strings quoted,
/// numbers bare, null as "null"); objects and arrays as JSON.
fn render(v: &Value) -> String {
    match v {
        Value::Null => go_quote("null"),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        Value::String(s) => go_quote(s),
        other => other.to_string(),
    }
}

/// Compares a number with a schema bound, exactly for integers.
fn cmp_bound(n: &Number, bound: f64) -> Option<Ordering> {
    if let Some(i) = n.as_i64() {
        if bound.fract() == 0.0 && bound.abs() < 9.0e18 {
            return Some(i128::from(i).cmp(&(bound as i128)));
        }
    }
    n.as_f64()?.partial_cmp(&bound)
}

/// JSON equality with numbers compared by value (1 == 1.0), as Go's
/// unstructured comparison does after its integer normalisation.
fn json_eq(a: &Value, b: &Value, depth: usize) -> bool {
    if depth > 2 * MAX_DEPTH {
        return false;
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64().is_some() && x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q, depth + 1))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_eq(p, q, depth + 1)))
        }
        _ => a == b,
    }
}

/// Order-independent, number-normalised key of a value for set membership
/// (list-type set/map, uniqueItems); None when nested too deeply to compare.
fn canonical(v: &Value) -> Option<String> {
    fn walk(v: &Value, depth: usize, out: &mut String) -> bool {
        if depth > 2 * MAX_DEPTH {
            return false;
        }
        match v {
            Value::Null => out.push('n'),
            Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    out.push_str(&format!("i{i}"));
                } else if let Some(u) = n.as_u64() {
                    out.push_str(&format!("i{u}"));
                } else {
                    match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && f.abs() < 1e38 => out.push_str(&format!("i{}", f as i128)),
                        Some(f) => out.push_str(&format!("f{f:e}")),
                        None => out.push_str(&format!("r{n}")),
                    }
                }
            }
            Value::String(s) => {
                out.push('s');
                out.push_str(&Value::String(s.clone()).to_string());
            }
            Value::Array(items) => {
                out.push('[');
                for it in items {
                    if !walk(it, depth + 1, out) {
                        return false;
                    }
                    out.push(',');
                }
                out.push(']');
            }
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for k in keys {
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    match map.get(k) {
                        Some(x) if walk(x, depth + 1, out) => {}
                        _ => return false,
                    }
                    out.push(',');
                }
                out.push('}');
            }
        }
        true
    }
    let mut out = String::new();
    walk(v, 0, &mut out).then_some(out)
}

// ---------------------------------------------------------------------------
// Pruning
// ---------------------------------------------------------------------------

/// Removes fields not described by the schema (unless x-kubernetes-preserve-unknown-fields: true at that level, or additionalProperties allows them), returning their paths (dotted, with [i] for list items) so that callers can report them (fieldValidation Strict/Warn). `apiVersion`, `kind` and `metadata` at the root are never pruned (metadata is handled elsewhere).
///
/// The same holds inside `x-kubernetes-embedded-resource` objects. A schema
/// node that is not a JSON object describes nothing, so it prunes nothing
/// (losing data on a malformed schema would be worse than keeping it).
pub fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    prune_node(schema, obj, "", true, 0, &mut pruned);
    pruned
}

fn prune_node(s: &Value, v: &mut Value, path: &str, root: bool, depth: usize, pruned: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(sm) = s.as_object() else { return };
    match v {
        Value::Object(map) => {
            let preserve = flag(sm, PRESERVE);
            let embedded = root || flag(sm, EMBEDDED);
            let props = sm.get("properties").and_then(Value::as_object);
            let additional = sm.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if embedded && is_reserved(&k) {
                    continue;
                }
                let sub = child(path, &k);
                let schema_for = match props.and_then(|p| p.get(&k)) {
                    Some(ps) => Some(ps),
                    None => additional.filter(|a| a.is_object()),
                };
                if let Some(ps) = schema_for {
                    if let Some(cv) = map.get_mut(&k) {
                        prune_node(ps, cv, &sub, false, depth + 1, pruned);
                    }
                } else if !(preserve || matches!(additional, Some(Value::Bool(true)))) {
                    map.remove(&k);
                    pruned.push(sub);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = sm.get("items").filter(|i| i.is_object()) {
                for (i, it) in items.iter_mut().enumerate() {
                    prune_node(is, it, &index(path, i), false, depth + 1, pruned);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Defaulting
// ---------------------------------------------------------------------------

/// Applies `default` values from the schema to absent fields (after pruning), as upstream defaulting does (defaults of nested objects apply only when the parent object exists).
///
/// As upstream, a `null` in a non-nullable field counts as absent: it is
/// replaced by the default, or dropped when there is none (so that the
/// object then reads as "field missing", not "wrong type").
pub fn apply_defaults(schema: &Value, obj: &mut Value) {
    default_node(schema, obj, true, 0);
}

fn has_default(s: &Map<String, Value>) -> Option<&Value> {
    s.get("default").filter(|d| !d.is_null())
}

fn non_nullable_null(v: &Value, s: &Value) -> bool {
    v.is_null() && !s.as_object().is_some_and(|m| flag(m, "nullable"))
}

fn default_node(s: &Value, v: &mut Value, root: bool, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some(sm) = s.as_object() else { return };
    match v {
        Value::Object(map) => {
            let embedded = flag(sm, EMBEDDED);
            // Root apiVersion/kind/metadata and embedded metadata belong to other code.
            let skip = |k: &str| (root && is_reserved(k)) || ((root || embedded) && k == "metadata");
            let props = sm.get("properties").and_then(Value::as_object);
            if let Some(props) = props {
                for (k, ps) in props {
                    if skip(k) {
                        continue;
                    }
                    let Some(psm) = ps.as_object() else { continue };
                    let missing_or_null = match map.get(k) {
                        None => true,
                        Some(cur) => non_nullable_null(cur, ps),
                    };
                    if !missing_or_null {
                        continue;
                    }
                    if let Some(d) = has_default(psm) {
                        map.insert(k.clone(), d.clone());
                    } else if map.get(k).is_some_and(Value::is_null) {
                        map.remove(k);
                    }
                }
            }
            let additional = sm.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if skip(&k) {
                    continue;
                }
                let Some(cv) = map.get_mut(&k) else { continue };
                if let Some(ps) = props.and_then(|p| p.get(&k)) {
                    default_node(ps, cv, false, depth + 1);
                } else if let Some(a) = additional {
                    default_element(a, cv, depth);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = sm.get("items").filter(|i| i.is_object()) {
                for it in items.iter_mut() {
                    default_element(is, it, depth);
                }
            }
        }
        _ => {}
    }
}

/// A list item or map value: a non-nullable null takes the default whole.
fn default_element(s: &Value, v: &mut Value, depth: usize) {
    if non_nullable_null(v, s) {
        if let Some(d) = s.as_object().and_then(has_default) {
            *v = d.clone();
        }
    }
    default_node(s, v, false, depth + 1);
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Validates types (object, array, string, integer, number, boolean; nullable; x-kubernetes-int-or-string; x-kubernetes-preserve-unknown-fields; x-kubernetes-embedded-resource only needs apiVersion/kind/metadata allowed), required, enum, minimum/maximum (+exclusive*), minLength/maxLength, minItems/maxItems, uniqueItems, minProperties/maxProperties, properties, additionalProperties (bool or schema), items, allOf/anyOf/oneOf/not (basic), x-kubernetes-list-type set/map (duplicates invalid; map keys via x-kubernetes-list-map-keys). Root `metadata`, `apiVersion`, `kind` are skipped.
///
/// A value of the wrong type gets only its type error (its other keywords
/// would just repeat it). `pattern` and `format` are not checked.
pub fn validate(schema: &Value, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_node(schema, obj, "", true, 0, &mut errs);
    errs
}

fn validate_node(s: &Value, v: &Value, path: &str, root: bool, depth: usize, errs: &mut Vec<FieldError>) {
    if depth > MAX_DEPTH {
        errs.push(FieldError::invalid(
            path,
            "\"\"",
            &format!(
                "{} in body is nested deeper than the supported {MAX_DEPTH} schema levels",
                name_of(path)
            ),
        ));
        return;
    }
    let Some(sm) = s.as_object() else { return };
    let int_or_string = flag(sm, INT_OR_STRING);
    let ty = type_str(sm);

    if v.is_null() {
        if !flag(sm, "nullable") {
            if int_or_string {
                errs.push(FieldError::type_invalid(path, "integer,string", "null"));
            } else if !ty.is_empty() {
                errs.push(FieldError::type_invalid(path, ty, "null"));
            }
        }
        return;
    }
    if int_or_string {
        // Upstream turns int-or-string into the type list [integer, string].
        if !(is_integer(v) || v.is_string()) {
            errs.push(FieldError::type_invalid(path, "integer,string", json_type(v)));
            return;
        }
    } else if !ty.is_empty() && !type_matches(ty, v) {
        errs.push(FieldError::type_invalid(path, ty, json_type(v)));
        return;
    }

    if let Some(Value::Array(allowed)) = sm.get("enum") {
        if !allowed.iter().any(|a| json_eq(a, v, 0)) {
            errs.push(FieldError::not_supported(path, v, allowed));
        }
    }

    match v {
        Value::Number(n) => check_number(sm, n, path, errs),
        Value::String(text) => check_string(sm, text, path, errs),
        Value::Array(items) => check_array(sm, items, path, depth, errs),
        Value::Object(map) => check_object(sm, map, path, root, depth, errs),
        _ => {}
    }
    check_junctors(sm, v, path, root, depth, errs);
}

fn check_number(sm: &Map<String, Value>, n: &Number, path: &str, errs: &mut Vec<FieldError>) {
    let name = name_of(path);
    let shown = go_number(n);
    // OpenAPI v3.0 spells exclusivity as a bool beside the bound; a numeric
    // exclusiveMaximum/Minimum (newer JSON Schema) is accepted too.
    let bounds = [
        ("maximum", "exclusiveMaximum", Ordering::Greater, "less than"),
        ("minimum", "exclusiveMinimum", Ordering::Less, "greater than"),
    ];
    for (key, excl_key, beyond, words) in bounds {
        if let Some(bound) = sm.get(key).and_then(Value::as_f64) {
            let exclusive = flag(sm, excl_key);
            if let Some(ord) = cmp_bound(n, bound) {
                if ord == beyond || (exclusive && ord == Ordering::Equal) {
                    let or_equal = if exclusive { "" } else { " or equal to" };
                    let detail = format!("{name} in body should be {words}{or_equal} {}", go_float(bound));
                    errs.push(FieldError::invalid(path, &shown, &detail));
                }
            }
        }
        if let Some(bound) = sm.get(excl_key).and_then(Value::as_f64) {
            if let Some(ord) = cmp_bound(n, bound) {
                if ord == beyond || ord == Ordering::Equal {
                    let detail = format!("{name} in body should be {words} {}", go_float(bound));
                    errs.push(FieldError::invalid(path, &shown, &detail));
                }
            }
        }
    }
    if let Some(factor) = sm.get("multipleOf").and_then(Value::as_f64) {
        if factor > 0.0 && factor.is_finite() {
            let ok = match n.as_i64() {
                Some(i) if factor.fract() == 0.0 && factor < 9.0e18 => i % (factor as i64) == 0,
                _ => n.as_f64().is_some_and(|x| {
                    let q = x / factor;
                    q.is_finite() && q.fract() == 0.0
                }),
            };
            if !ok {
                let detail = format!("{name} in body should be a multiple of {}", go_float(factor));
                errs.push(FieldError::invalid(path, &shown, &detail));
            }
        }
    }
}

fn check_string(sm: &Map<String, Value>, text: &str, path: &str, errs: &mut Vec<FieldError>) {
    // Lengths count characters (runes), as kube-openapi does.
    let len = text.chars().count() as u64;
    if let Some(max) = count_of(sm.get("maxLength")) {
        if len > max {
            errs.push(FieldError::too_long(path, max));
        }
    }
    if let Some(min) = count_of(sm.get("minLength")) {
        if len < min {
            let detail = format!("{} in body should be at least {min} chars long", name_of(path));
            errs.push(FieldError::invalid(path, &go_quote(text), &detail));
        }
    }
    // `pattern` is intentionally unchecked: no regex engine is available here.
}

fn check_array(sm: &Map<String, Value>, items: &[Value], path: &str, depth: usize, errs: &mut Vec<FieldError>) {
    let name = name_of(path);
    if let Some(min) = count_of(sm.get("minItems")) {
        if (items.len() as u64) < min {
            let detail = format!("{name} in body should have at least {min} items");
            errs.push(FieldError::invalid(path, &items.len().to_string(), &detail));
        }
    }
    if let Some(max) = count_of(sm.get("maxItems")) {
        if items.len() as u64 > max {
            errs.push(FieldError::too_many(path, items.len(), max));
        }
    }
    if flag(sm, "uniqueItems") {
        let mut seen = HashSet::new();
        let dup = items.iter().filter_map(canonical).any(|k| !seen.insert(k));
        if dup {
            errs.push(FieldError::invalid(
                path,
                "\"\"",
                &format!("{name} in body shouldn't contain duplicates"),
            ));
        }
    }
    if let Some(is) = sm.get("items").filter(|i| i.is_object()) {
        for (i, it) in items.iter().enumerate() {
            validate_node(is, it, &index(path, i), false, depth + 1, errs);
        }
    }
    match sm.get(LIST_TYPE).and_then(Value::as_str) {
        Some("set") => {
            let mut seen = HashSet::new();
            for (i, it) in items.iter().enumerate() {
                if let Some(key) = canonical(it) {
                    if !seen.insert(key) {
                        errs.push(FieldError::duplicate(&index(path, i), it));
                    }
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = match sm.get(LIST_MAP_KEYS) {
                Some(Value::Array(k)) => k.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if keys.is_empty() {
                return;
            }
            let mut seen = HashSet::new();
            for (i, it) in items.iter().enumerate() {
                // Non-object items already failed their type check.
                let Some(m) = it.as_object() else { continue };
                let mut key = String::new();
                let mut shown = Map::new();
                for k in &keys {
                    match m.get(*k) {
                        Some(x) => {
                            key.push_str(&canonical(x).unwrap_or_default());
                            shown.insert((*k).to_string(), x.clone());
                        }
                        None => key.push('-'),
                    }
                    key.push('|');
                }
                if !seen.insert(key) {
                    errs.push(FieldError::duplicate(&index(path, i), &Value::Object(shown)));
                }
            }
        }
        _ => {}
    }
}

fn check_object(
    sm: &Map<String, Value>,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    depth: usize,
    errs: &mut Vec<FieldError>,
) {
    let name = name_of(path);
    if let Some(max) = count_of(sm.get("maxProperties")) {
        if map.len() as u64 > max {
            errs.push(FieldError::too_many(path, map.len(), max));
        }
    }
    if let Some(min) = count_of(sm.get("minProperties")) {
        if (map.len() as u64) < min {
            let detail = format!("{name} in body should have at least {min} properties");
            errs.push(FieldError::invalid(path, &map.len().to_string(), &detail));
        }
    }
    if let Some(Value::Array(required)) = sm.get("required") {
        for r in required.iter().filter_map(Value::as_str) {
            if root && is_reserved(r) {
                continue;
            }
            if !map.contains_key(r) {
                errs.push(FieldError::required(&child(path, r)));
            }
        }
    }
    let embedded = root || flag(sm, EMBEDDED);
    let props = sm.get("properties").and_then(Value::as_object);
    let additional = sm.get("additionalProperties");
    for (k, cv) in map {
        if root && is_reserved(k) {
            continue;
        }
        match (props.and_then(|p| p.get(k)), additional) {
            (Some(ps), _) => validate_node(ps, cv, &child(path, k), false, depth + 1, errs),
            (None, Some(a @ Value::Object(_))) => validate_node(a, cv, &child(path, k), false, depth + 1, errs),
            (None, Some(Value::Bool(false))) if !(embedded && is_reserved(k)) => {
                let detail = format!("{name}.{k} in body is a forbidden property");
                errs.push(FieldError::invalid(path, &go_quote(k), &detail));
            }
            _ => {}
        }
    }
}

fn sub_validate(s: &Value, v: &Value, path: &str, root: bool, depth: usize) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_node(s, v, path, root, depth + 1, &mut errs);
    errs
}

/// First failure set with the fewest errors: a stand-in for kube-openapi's
/// "best match" when no alternative validates.
fn best_failure(results: Vec<Vec<FieldError>>) -> Vec<FieldError> {
    let mut best: Option<Vec<FieldError>> = None;
    for r in results {
        if best.as_ref().is_none_or(|b| r.len() < b.len()) {
            best = Some(r);
        }
    }
    best.unwrap_or_default()
}

fn check_junctors(
    sm: &Map<String, Value>,
    v: &Value,
    path: &str,
    root: bool,
    depth: usize,
    errs: &mut Vec<FieldError>,
) {
    let quoted = go_quote(path);
    if let Some(Value::Array(all)) = sm.get("allOf") {
        let mut failed = 0;
        let mut collected = Vec::new();
        for sub in all {
            let e = sub_validate(sub, v, path, root, depth);
            if !e.is_empty() {
                failed += 1;
                collected.extend(e);
            }
        }
        if failed > 0 {
            // Upstream glues "Found none valid" on without punctuation.
            let none = if failed == all.len() { "Found none valid" } else { "" };
            errs.push(FieldError::composite(
                path,
                format!("{quoted} must validate all the schemas (allOf){none}"),
            ));
            errs.extend(collected);
        }
    }
    if let Some(Value::Array(any)) = sm.get("anyOf") {
        if !any.is_empty() {
            let mut failures = Vec::new();
            for sub in any {
                let e = sub_validate(sub, v, path, root, depth);
                if e.is_empty() {
                    failures.clear();
                    break;
                }
                failures.push(e);
            }
            if failures.len() == any.len() {
                errs.push(FieldError::composite(
                    path,
                    format!("{quoted} must validate at least one schema (anyOf)"),
                ));
                errs.extend(best_failure(failures));
            }
        }
    }
    if let Some(Value::Array(one)) = sm.get("oneOf") {
        if !one.is_empty() {
            let mut valid = 0;
            let mut failures = Vec::new();
            for sub in one {
                let e = sub_validate(sub, v, path, root, depth);
                if e.is_empty() {
                    valid += 1;
                } else {
                    failures.push(e);
                }
            }
            if valid != 1 {
                let found = if valid == 0 {
                    "Found none valid".to_string()
                } else {
                    format!("Found {valid} valid alternatives")
                };
                errs.push(FieldError::composite(
                    path,
                    format!("{quoted} must validate one and only one schema (oneOf). {found}"),
                ));
                if valid == 0 {
                    errs.extend(best_failure(failures));
                }
            }
        }
    }
    if let Some(not) = sm.get("not").filter(|n| n.is_object()) {
        if sub_validate(not, v, path, root, depth).is_empty() {
            errs.push(FieldError::composite(
                path,
                format!("{quoted} must not validate the schema (not)"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Structural schema check
// ---------------------------------------------------------------------------

/// Checks that a CRD's schema is structural enough to use (type given for every property node except under preserve-unknown-fields / int-or-string, no `$ref`, etc.); returns problems as messages, empty = fine.
///
/// Messages read like upstream's, with paths starting at `openAPIV3Schema`
/// (callers prepend e.g. `spec.versions[0].schema.`). Also checked: the
/// root is `type: object`, arrays have one `items` schema, v1's bans
/// (`additionalProperties: false`, `uniqueItems: true`, `properties` beside
/// an `additionalProperties` schema), extension flags, list-type map keys,
/// that junctors (allOf/anyOf/oneOf/not) only restate fields of the
/// structural part, and that defaults validate against their own schema.
pub fn check_structural(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check_node(schema, "openAPIV3Schema", Level::Root, 0, &mut out);
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Level {
    Root,
    Field,
    Item,
}

const SCHEMA_TYPES: [&str; 6] = ["array", "boolean", "integer", "number", "object", "string"];
const UNSUPPORTED_KEYS: [&str; 7] = [
    "$ref",
    "$schema",
    "id",
    "definitions",
    "dependencies",
    "patternProperties",
    "additionalItems",
];

fn supported_list(values: &[&str]) -> String {
    values.iter().map(|v| go_quote(v)).collect::<Vec<_>>().join(", ")
}

fn check_bool_keys(sm: &Map<String, Value>, path: &str, keys: &[&str], out: &mut Vec<String>) {
    for key in keys {
        if let Some(x) = sm.get(*key) {
            if !x.is_boolean() {
                out.push(format!("{path}.{key}: Invalid value: {}: must be a boolean", render(x)));
            }
        }
    }
}

fn check_node(s: &Value, path: &str, level: Level, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        out.push(format!(
            "{path}: Invalid value: schema is nested deeper than {MAX_DEPTH} levels"
        ));
        return;
    }
    let Some(sm) = s.as_object() else {
        out.push(format!("{path}: Invalid value: {}: must be a schema object", render(s)));
        return;
    };
    for key in UNSUPPORTED_KEYS {
        if sm.contains_key(key) {
            out.push(format!("{path}.{key}: Forbidden: {key} is not supported"));
        }
    }
    check_bool_keys(sm, path, &[EMBEDDED, INT_OR_STRING, "nullable", "uniqueItems"], out);
    // A numeric exclusive bound (newer JSON Schema) is tolerated beside OpenAPI's bool.
    for key in ["exclusiveMaximum", "exclusiveMinimum"] {
        if let Some(x) = sm.get(key).filter(|x| !x.is_boolean() && !x.is_number()) {
            out.push(format!("{path}.{key}: Invalid value: {}: must be a boolean", render(x)));
        }
    }

    let preserve = match sm.get(PRESERVE) {
        None | Some(Value::Bool(true)) => flag(sm, PRESERVE),
        Some(other) => {
            out.push(format!(
                "{path}.{PRESERVE}: Invalid value: {}: must be true or undefined",
                render(other)
            ));
            false
        }
    };
    let int_or_string = flag(sm, INT_OR_STRING);
    let embedded = flag(sm, EMBEDDED);

    let ty = match sm.get("type") {
        None => "",
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            out.push(format!(
                "{path}.type: Invalid value: {}: must be a string",
                render(other)
            ));
            ""
        }
    };
    if !ty.is_empty() && !SCHEMA_TYPES.contains(&ty) {
        out.push(format!(
            "{path}.type: Unsupported value: {}: supported values: {}",
            go_quote(ty),
            supported_list(&SCHEMA_TYPES)
        ));
    }
    if int_or_string && !ty.is_empty() {
        out.push(format!(
            "{path}.type: Invalid value: {}: must be empty if x-kubernetes-int-or-string is true",
            go_quote(ty)
        ));
    }
    match level {
        Level::Root if ty.is_empty() => out.push(format!("{path}.type: Required value: must not be empty at the root")),
        Level::Root if ty != "object" => out.push(format!(
            "{path}.type: Invalid value: {}: must be object at the root",
            go_quote(ty)
        )),
        Level::Field | Level::Item if ty.is_empty() && !int_or_string && !preserve => {
            let what = if level == Level::Item {
                "array items"
            } else {
                "object fields"
            };
            out.push(format!(
                "{path}.type: Required value: must not be empty for specified {what}"
            ));
        }
        _ => {}
    }
    if embedded && ty != "object" {
        out.push(format!(
            "{path}.type: Invalid value: {}: must be object if {EMBEDDED} is true",
            go_quote(ty)
        ));
    }

    // properties
    let props = match sm.get("properties") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(other) => {
            out.push(format!(
                "{path}.properties: Invalid value: {}: must be an object",
                render(other)
            ));
            None
        }
    };
    if let Some(p) = props {
        if !p.is_empty() && !ty.is_empty() && ty != "object" {
            out.push(format!(
                "{path}.properties: Forbidden: must only be used with type object"
            ));
        }
        if level == Level::Root {
            if let Some(meta) = p.get("metadata").and_then(Value::as_object) {
                let extra = meta
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|mp| mp.keys().any(|k| k != "name" && k != "generateName"));
                if extra {
                    out.push(format!(
                        "{path}.properties[metadata]: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
                    ));
                }
            }
        }
        for (k, ps) in p {
            check_node(ps, &format!("{path}.properties[{k}]"), Level::Field, depth + 1, out);
        }
    }

    // additionalProperties
    match sm.get("additionalProperties") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => out.push(format!(
            "{path}.additionalProperties: Forbidden: additionalProperties cannot be set to false"
        )),
        Some(a @ Value::Object(_)) => {
            if props.is_some_and(|p| !p.is_empty()) {
                out.push(format!(
                    "{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
                ));
            }
            if preserve {
                out.push(format!(
                    "{path}.additionalProperties: Forbidden: must not be used if {PRESERVE} is true"
                ));
            }
            check_node(a, &format!("{path}.additionalProperties"), Level::Field, depth + 1, out);
        }
        Some(other) => out.push(format!(
            "{path}.additionalProperties: Invalid value: {}: must be a boolean or a schema object",
            render(other)
        )),
    }

    // items
    match sm.get("items") {
        None => {
            if ty == "array" {
                out.push(format!("{path}.items: Required value: must be specified"));
            }
        }
        Some(Value::Array(_)) => out.push(format!(
            "{path}.items: Forbidden: items must be a schema object and not an array"
        )),
        Some(is @ Value::Object(_)) => {
            if !ty.is_empty() && ty != "array" {
                out.push(format!("{path}.items: Forbidden: must only be used with type array"));
            }
            check_node(is, &format!("{path}.items"), Level::Item, depth + 1, out);
        }
        Some(other) => out.push(format!(
            "{path}.items: Invalid value: {}: must be a schema object",
            render(other)
        )),
    }
    if flag(sm, "uniqueItems") {
        out.push(format!(
            "{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ));
    }

    check_list_type(sm, path, ty, out);

    // default: must be valid and fully described by its own schema node.
    if let Some(d) = has_default(sm) {
        let mut copy = d.clone();
        let mut pruned = Vec::new();
        prune_node(s, &mut copy, "default", false, depth, &mut pruned);
        for p in pruned {
            out.push(format!("{path}.{p}: Forbidden: unknown field, it would be pruned"));
        }
        let mut errs = Vec::new();
        validate_node(s, d, "default", false, depth, &mut errs);
        for e in errs {
            out.push(format!("{path}.{e}"));
        }
    }

    // Junctors may only restate what the structural part already declares.
    for key in ["allOf", "anyOf", "oneOf"] {
        match sm.get(key) {
            None => {}
            Some(Value::Array(list)) => {
                for (i, j) in list.iter().enumerate() {
                    check_junctor(
                        j,
                        Some(sm),
                        &format!("{path}.{key}[{i}]"),
                        int_or_string,
                        depth + 1,
                        out,
                    );
                }
            }
            Some(other) => out.push(format!(
                "{path}.{key}: Invalid value: {}: must be a list of schemas",
                render(other)
            )),
        }
    }
    if let Some(n) = sm.get("not") {
        check_junctor(n, Some(sm), &format!("{path}.not"), int_or_string, depth + 1, out);
    }
}

fn check_list_type(sm: &Map<String, Value>, path: &str, ty: &str, out: &mut Vec<String>) {
    let list_type = match sm.get(LIST_TYPE) {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(other) => {
            out.push(format!(
                "{path}.{LIST_TYPE}: Invalid value: {}: must be a string",
                render(other)
            ));
            None
        }
    };
    if let Some(lt) = list_type {
        if !["atomic", "set", "map"].contains(&lt) {
            out.push(format!(
                "{path}.{LIST_TYPE}: Unsupported value: {}: supported values: {}",
                go_quote(lt),
                supported_list(&["atomic", "map", "set"])
            ));
        }
        if ty != "array" {
            out.push(format!(
                "{path}.{LIST_TYPE}: Invalid value: {}: must only be used if type is array",
                go_quote(lt)
            ));
        }
    }
    let keys = sm.get(LIST_MAP_KEYS);
    if list_type == Some("map") {
        let names: Vec<&str> = match keys {
            Some(Value::Array(k)) => k.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if names.is_empty() {
            out.push(format!(
                "{path}.{LIST_MAP_KEYS}: Required value: must not be empty if {LIST_TYPE} is map"
            ));
            return;
        }
        let item = sm.get("items").and_then(Value::as_object);
        if let Some(item) = item {
            if type_str(item) != "object" {
                out.push(format!(
                    "{path}.items.type: Invalid value: {}: must be object if parent array's {LIST_TYPE} is map",
                    go_quote(type_str(item))
                ));
            }
            let item_props = item.get("properties").and_then(Value::as_object);
            for k in names {
                match item_props.and_then(|p| p.get(k)).and_then(Value::as_object) {
                    None => out.push(format!(
                        "{path}.{LIST_MAP_KEYS}: Invalid value: {}: entries must all be names of item properties",
                        go_quote(k)
                    )),
                    Some(kp) if matches!(type_str(kp), "object" | "array") => out.push(format!(
                        "{path}.items.properties[{k}].type: Invalid value: {}: must be a scalar type if parent array's {LIST_TYPE} is map",
                        go_quote(type_str(kp))
                    )),
                    Some(_) => {}
                }
            }
        }
    } else if keys.is_some() {
        out.push(format!(
            "{path}.{LIST_MAP_KEYS}: Forbidden: requires {LIST_TYPE} to be map"
        ));
    }
}

/// Keys a value validation (inside allOf/anyOf/oneOf/not) must not carry.
const JUNCTOR_FORBIDDEN: [&str; 12] = [
    "type",
    "default",
    "description",
    "title",
    "nullable",
    "additionalProperties",
    PRESERVE,
    EMBEDDED,
    INT_OR_STRING,
    LIST_TYPE,
    LIST_MAP_KEYS,
    "x-kubernetes-map-type",
];

/// `structural` is the node of the structural part at the same position;
/// None below a preserve-unknown-fields node, where anything may be restated.
fn check_junctor(
    j: &Value,
    structural: Option<&Map<String, Value>>,
    path: &str,
    int_or_string: bool,
    depth: usize,
    out: &mut Vec<String>,
) {
    if depth > MAX_DEPTH {
        out.push(format!(
            "{path}: Invalid value: schema is nested deeper than {MAX_DEPTH} levels"
        ));
        return;
    }
    let Some(jm) = j.as_object() else {
        out.push(format!("{path}: Invalid value: {}: must be a schema object", render(j)));
        return;
    };
    for key in UNSUPPORTED_KEYS {
        if jm.contains_key(key) {
            out.push(format!("{path}.{key}: Forbidden: {key} is not supported"));
        }
    }
    for key in JUNCTOR_FORBIDDEN {
        let Some(x) = jm.get(key) else { continue };
        // The int-or-string idiom: anyOf/allOf of {type: integer} and {type: string}.
        let idiom = key == "type" && int_or_string && matches!(x.as_str(), Some("integer" | "string"));
        if !idiom {
            out.push(format!("{path}.{key}: Forbidden: must be empty to be structural"));
        }
    }
    if flag(jm, "uniqueItems") {
        out.push(format!(
            "{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ));
    }
    let open = structural.is_none_or(|s| flag(s, PRESERVE));
    if let Some(p) = jm.get("properties") {
        match p.as_object() {
            None => out.push(format!(
                "{path}.properties: Invalid value: {}: must be an object",
                render(p)
            )),
            Some(p) => {
                for (k, ps) in p {
                    let counterpart = structural.and_then(|s| {
                        s.get("properties")
                            .and_then(Value::as_object)
                            .and_then(|sp| sp.get(k))
                            .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
                            .and_then(Value::as_object)
                    });
                    let sub = format!("{path}.properties[{k}]");
                    if counterpart.is_none() && !open {
                        out.push(format!(
                            "{sub}: Required value: must be specified in the structural part of the schema as well"
                        ));
                    }
                    check_junctor(ps, counterpart, &sub, false, depth + 1, out);
                }
            }
        }
    }
    if let Some(is) = jm.get("items") {
        let counterpart = structural.and_then(|s| s.get("items")).and_then(Value::as_object);
        if counterpart.is_none() && !open {
            out.push(format!(
                "{path}.items: Required value: must be specified in the structural part of the schema as well"
            ));
        }
        if is.is_array() {
            out.push(format!(
                "{path}.items: Forbidden: items must be a schema object and not an array"
            ));
        } else {
            check_junctor(is, counterpart, &format!("{path}.items"), false, depth + 1, out);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(list)) = jm.get(key) {
            for (i, sub) in list.iter().enumerate() {
                check_junctor(
                    sub,
                    structural,
                    &format!("{path}.{key}[{i}]"),
                    int_or_string,
                    depth + 1,
                    out,
                );
            }
        }
    }
    if let Some(n) = jm.get("not") {
        check_junctor(n, structural, &format!("{path}.not"), int_or_string, depth + 1, out);
    }
}

// ---------------------------------------------------------------------------
// Printer columns
// ---------------------------------------------------------------------------

/// Cell value for an additionalPrinterColumns jsonPath (a simple JSONPath like `.spec.replicas`, `.status.conditions[0].type`, `.metadata.labels.app`, also `.spec.x[*].y` joined by ","), formatted per column type: "integer"/"number" → JSON number, "boolean" → bool, "date" → the string (caller formats age), "string" → string; missing → null.
///
/// Also understood: `{...}` wrapping, a leading `$`, `['key']` and
/// `\.`-escaped dots in keys, negative indexes, and filters of the form
/// `[?(@.type=="Ready")]` (`==`, `!=`, or bare existence). Several matches
/// become one comma-joined string whatever the column type; a value of the
/// wrong type, an unknown column type or an unsupported path gives null.
pub fn printer_cell(obj: &Value, json_path: &str, type_: &str) -> Value {
    let Some(steps) = parse_json_path(json_path) else {
        return Value::Null;
    };
    let found: Vec<&Value> = eval_path(obj, &steps).into_iter().filter(|v| !v.is_null()).collect();
    match found.as_slice() {
        [] => Value::Null,
        [one] => cell_value(one, type_),
        many => Value::String(many.iter().map(|v| cell_text(v)).collect::<Vec<_>>().join(",")),
    }
}

fn cell_value(v: &Value, type_: &str) -> Value {
    match (type_, v) {
        ("integer", Value::Number(n)) => {
            if n.is_i64() || n.is_u64() {
                v.clone()
            } else {
                // Upstream truncates float64 cells of integer columns.
                n.as_f64().map(|f| Value::from(f as i64)).unwrap_or(Value::Null)
            }
        }
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) | ("date", Value::String(_)) => v.clone(),
        ("string", _) => Value::String(cell_text(v)),
        _ => Value::Null,
    }
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => go_number(n),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

enum Step {
    Key(String),
    Index(i64),
    Wildcard,
    Filter(Filter),
}

struct Filter {
    path: Vec<String>,
    /// None: the path only has to exist.
    cmp: Option<(bool /* equal */, Value)>,
}

fn parse_json_path(p: &str) -> Option<Vec<Step>> {
    let mut s = p.trim();
    if let Some(inner) = s.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
        s = inner.trim();
    }
    let s = s.strip_prefix('$').unwrap_or(s);
    let chars: Vec<char> = s.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' if chars.get(i + 1) == Some(&'.') => return None, // recursive descent: unsupported
            '[' => {
                let start = i + 1;
                let mut j = start;
                let mut quote: Option<char> = None;
                let mut parens = 0i32;
                while j < chars.len() {
                    let c = chars[j];
                    match quote {
                        Some(_) if c == '\\' => j += 1,
                        Some(q) if c == q => quote = None,
                        Some(_) => {}
                        None => match c {
                            '\'' | '"' => quote = Some(c),
                            '(' => parens += 1,
                            ')' => parens -= 1,
                            ']' if parens <= 0 => break,
                            _ => {}
                        },
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return None;
                }
                let inner: String = chars[start..j].iter().collect();
                steps.push(parse_bracket(inner.trim())?);
                i = j + 1;
            }
            c if c.is_whitespace() => i += 1,
            c => {
                // A dotted key; the leading dot is optional for the first one.
                if c == '.' {
                    i += 1;
                }
                let mut name = String::new();
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        name.push(chars[i + 1]);
                        i += 2;
                    } else {
                        name.push(chars[i]);
                        i += 1;
                    }
                }
                let name = name.trim();
                if name == "*" {
                    steps.push(Step::Wildcard);
                } else if !name.is_empty() {
                    steps.push(Step::Key(name.to_string()));
                }
            }
        }
    }
    Some(steps)
}

fn unquote(s: &str) -> Option<String> {
    let first = s.chars().next()?;
    if s.len() >= 2 && (first == '\'' || first == '"') && s.ends_with(first) {
        let body = &s[1..s.len() - 1];
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        Some(out)
    } else {
        None
    }
}

fn parse_bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::Wildcard);
    }
    if let Some(key) = unquote(inner) {
        return Some(Step::Key(key));
    }
    if let Some(expr) = inner.strip_prefix("?(").and_then(|x| x.strip_suffix(')')) {
        return parse_filter(expr.trim()).map(Step::Filter);
    }
    inner.parse::<i64>().ok().map(Step::Index)
}

fn parse_filter(expr: &str) -> Option<Filter> {
    // Split at the first ==/!= outside quotes.
    let bytes = expr.as_bytes();
    let mut quote: Option<u8> = None;
    let mut split = None;
    let mut k = 0;
    while k + 1 < bytes.len() {
        let b = bytes[k];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if (b == b'=' || b == b'!') && bytes[k + 1] == b'=' => {
                split = Some((k, b == b'='));
                break;
            }
            None => {}
        }
        k += 1;
    }
    let (left, cmp) = match split {
        Some((at, equal)) => {
            let right = expr.get(at + 2..)?.trim();
            let literal = match unquote(right) {
                Some(s) => Value::String(s),
                None => serde_json::from_str::<Value>(right).ok()?,
            };
            (expr.get(..at)?.trim(), Some((equal, literal)))
        }
        None => (expr, None),
    };
    let rest = left.strip_prefix('@')?;
    let mut path = Vec::new();
    for step in parse_json_path(rest)? {
        match step {
            Step::Key(k) => path.push(k),
            _ => return None,
        }
    }
    Some(Filter { path, cmp })
}

fn filter_matches(f: &Filter, v: &Value) -> bool {
    let mut cur = v;
    for k in &f.path {
        match cur.get(k.as_str()) {
            Some(x) => cur = x,
            None => return false,
        }
    }
    match &f.cmp {
        None => true,
        Some((equal, lit)) => json_eq(cur, lit, 0) == *equal,
    }
}

fn eval_path<'a>(root: &'a Value, steps: &[Step]) -> Vec<&'a Value> {
    let mut cur = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for v in cur {
            match step {
                Step::Key(k) => next.extend(v.as_object().and_then(|m| m.get(k))),
                Step::Index(i) => {
                    if let Value::Array(a) = v {
                        let idx = if *i < 0 {
                            i.checked_add(a.len() as i64)
                        } else {
                            Some(*i)
                        };
                        next.extend(idx.and_then(|x| usize::try_from(x).ok()).and_then(|x| a.get(x)));
                    }
                }
                Step::Wildcard => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter(f) => match v {
                    Value::Array(a) => next.extend(a.iter().filter(|x| filter_matches(f, x))),
                    Value::Object(m) => next.extend(m.values().filter(|x| filter_matches(f, x))),
                    _ => {}
                },
            }
        }
        if next.is_empty() {
            return next;
        }
        cur = next;
    }
    cur
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crontab_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["cronSpec", "image"],
                    "properties": {
                        "cronSpec": {"type": "string"},
                        "image": {"type": "string"},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10}
                    }
                },
                "status": {
                    "type": "object",
                    "properties": {"replicas": {"type": "integer"}}
                }
            }
        })
    }

    fn crontab(spec: Value) -> Value {
        json!({
            "apiVersion": "stable.example.com/v1",
            "kind": "CronTab",
            "metadata": {"name": "my-new-cron-object", "namespace": "default"},
            "spec": spec
        })
    }

    fn only(errs: &[FieldError]) -> &FieldError {
        assert_eq!(errs.len(), 1, "expected exactly one error, got {errs:#?}");
        &errs[0]
    }

    #[test]
    fn valid_crontab_has_no_errors() {
        let obj = crontab(json!({"cronSpec": "* * * * */5", "image": "my-awesome-cron-image", "replicas": 3}));
        assert!(validate(&crontab_schema(), &obj).is_empty());
        assert!(check_structural(&crontab_schema()).is_empty());
    }

    #[test]
    fn string_replicas_is_a_type_error_with_upstream_wording() {
        let obj = crontab(json!({"cronSpec": "x", "image": "y", "replicas": "string"}));
        let errs = validate(&crontab_schema(), &obj);
        let e = only(&errs);
        assert_eq!(e.reason, "FieldValueTypeInvalid");
        assert_eq!(e.field, "spec.replicas");
        assert_eq!(
            e.message,
            r#"Invalid value: "string": spec.replicas in body must be of type integer: "string""#
        );
        assert_eq!(
            e.to_string(),
            r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#
        );
    }

    #[test]
    fn fractional_number_for_integer_reports_number_type() {
        let obj = crontab(json!({"cronSpec": "x", "image": "y", "replicas": 2.5}));
        let e = validate(&crontab_schema(), &obj);
        assert_eq!(
            only(&e).message,
            r#"Invalid value: "number": spec.replicas in body must be of type integer: "number""#
        );
    }

    #[test]
    fn integral_float_is_accepted_as_integer() {
        let obj = crontab(json!({"cronSpec": "x", "image": "y", "replicas": 3.0}));
        assert!(validate(&crontab_schema(), &obj).is_empty());
    }

    #[test]
    fn replicas_above_maximum_is_invalid() {
        let obj = crontab(json!({"cronSpec": "x", "image": "y", "replicas": 11}));
        let errs = validate(&crontab_schema(), &obj);
        let e = only(&errs);
        assert_eq!(e.reason, "FieldValueInvalid");
        assert_eq!(e.field, "spec.replicas");
        assert_eq!(
            e.message,
            "Invalid value: 11: spec.replicas in body should be less than or equal to 10"
        );
    }

    #[test]
    fn replicas_below_minimum_is_invalid() {
        let obj = crontab(json!({"cronSpec": "x", "image": "y", "replicas": 0}));
        let e = validate(&crontab_schema(), &obj);
        assert_eq!(
            only(&e).message,
            "Invalid value: 0: spec.replicas in body should be greater than or equal to 1"
        );
    }

    #[test]
    fn exclusive_bounds_reject_the_bound_itself() {
        let s = json!({"type": "object", "properties": {"n": {
            "type": "number", "maximum": 5, "exclusiveMaximum": true, "minimum": 0.5, "exclusiveMinimum": true}}});
        let e = validate(&s, &json!({"n": 5}));
        assert_eq!(only(&e).message, "Invalid value: 5: n in body should be less than 5");
        let e = validate(&s, &json!({"n": 0.5}));
        assert_eq!(
            only(&e).message,
            "Invalid value: 0.5: n in body should be greater than 0.5"
        );
        assert!(validate(&s, &json!({"n": 4.99})).is_empty());
    }

    #[test]
    fn large_bounds_print_like_go_floats() {
        let s = json!({"type": "object", "properties": {"n": {"type": "integer", "maximum": 1000000}}});
        let e = validate(&s, &json!({"n": 1000001}));
        assert_eq!(
            only(&e).message,
            "Invalid value: 1000001: n in body should be less than or equal to 1e+06"
        );
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(-2.5e20), "-2.5e+20");
    }

    #[test]
    fn multiple_of_is_checked() {
        let s = json!({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5}}});
        assert!(validate(&s, &json!({"n": 15})).is_empty());
        let e = validate(&s, &json!({"n": 7}));
        assert_eq!(
            only(&e).message,
            "Invalid value: 7: n in body should be a multiple of 5"
        );
    }

    #[test]
    fn missing_required_fields_are_reported_each() {
        let obj = crontab(json!({"replicas": 2}));
        let errs = validate(&crontab_schema(), &obj);
        assert_eq!(errs.len(), 2);
        assert!(errs
            .iter()
            .all(|e| e.reason == "FieldValueRequired" && e.message == "Required value"));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.cronSpec", "spec.image"]);
    }

    #[test]
    fn root_required_metadata_apiversion_kind_are_skipped() {
        let s = json!({"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                       "properties": {"spec": {"type": "object"}, "metadata": {"type": "string"}}});
        let e = validate(&s, &json!({"metadata": {"name": "x"}}));
        assert_eq!(only(&e).field, "spec");
    }

    #[test]
    fn enum_violation_lists_supported_values() {
        let s = json!({"type": "object", "properties": {
            "policy": {"type": "string", "enum": ["Allow", "Forbid"]},
            "level": {"type": "integer", "enum": [1, 2]}}});
        let errs = validate(&s, &json!({"level": 3, "policy": "x"}));
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].reason, "FieldValueNotSupported");
        assert_eq!(errs[0].field, "level");
        assert_eq!(errs[0].message, r#"Unsupported value: 3: supported values: "1", "2""#);
        assert_eq!(errs[1].field, "policy");
        assert_eq!(
            errs[1].message,
            r#"Unsupported value: "x": supported values: "Allow", "Forbid""#
        );
        assert!(validate(&s, &json!({"policy": "Allow", "level": 2.0})).is_empty());
    }

    #[test]
    fn unknown_fields_are_pruned_and_reported_with_paths() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "cronSpec": {"type": "string"},
            "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}}}});
        let mut obj = json!({
            "apiVersion": "stable.example.com/v1", "kind": "CronTab",
            "metadata": {"name": "a", "unknownMeta": 1},
            "spec": {"cronSpec": "x", "bogus": true, "items": [{"name": "a", "extra": 1}, {"name": "b"}]},
            "topLevel": {"x": 1}
        });
        let pruned = prune(&s, &mut obj);
        let mut sorted = pruned.clone();
        sorted.sort();
        assert_eq!(sorted, ["spec.bogus", "spec.items[0].extra", "topLevel"]);
        assert_eq!(
            obj,
            json!({
                "apiVersion": "stable.example.com/v1", "kind": "CronTab",
                "metadata": {"name": "a", "unknownMeta": 1},
                "spec": {"cronSpec": "x", "items": [{"name": "a"}, {"name": "b"}]}
            })
        );
    }

    #[test]
    fn root_apiversion_kind_metadata_are_never_pruned_even_with_empty_schema() {
        let mut obj = json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "n"}, "spec": {}});
        let pruned = prune(&json!({"type": "object"}), &mut obj);
        assert_eq!(pruned, ["spec"]);
        assert_eq!(obj, json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "n"}}));
    }

    #[test]
    fn preserve_unknown_fields_keeps_nested_unknowns() {
        let s = json!({"type": "object", "properties": {"spec": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": {"strict": {"type": "object", "properties": {"a": {"type": "string"}}}}}}});
        let mut obj = json!({"spec": {"free": {"deep": {"er": [1, {"x": null}]}}, "strict": {"a": "1", "b": 2}}});
        let pruned = prune(&s, &mut obj);
        assert_eq!(pruned, ["spec.strict.b"]);
        assert_eq!(
            obj,
            json!({"spec": {"free": {"deep": {"er": [1, {"x": null}]}}, "strict": {"a": "1"}}})
        );
        assert!(validate(&s, &obj).is_empty());
    }

    #[test]
    fn preserve_unknown_fields_without_type_accepts_any_value() {
        let s = json!({"type": "object", "properties": {"raw": {"x-kubernetes-preserve-unknown-fields": true}}});
        for v in [json!(1), json!("s"), json!([1]), json!({"a": {"b": 1}}), json!(null)] {
            let mut obj = json!({"raw": v.clone()});
            assert!(prune(&s, &mut obj).is_empty());
            assert_eq!(obj["raw"], v);
            assert!(validate(&s, &obj).is_empty());
        }
    }

    #[test]
    fn embedded_resource_keeps_apiversion_kind_metadata() {
        let s = json!({"type": "object", "properties": {"template": {
            "type": "object", "x-kubernetes-embedded-resource": true,
            "properties": {"spec": {"type": "object", "properties": {"x": {"type": "string"}}}},
            "additionalProperties": false}}});
        let mut obj = json!({"template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                           "spec": {"x": "1", "y": 2}, "junk": 1}});
        let mut pruned = prune(&s, &mut obj);
        pruned.sort();
        assert_eq!(pruned, ["template.junk", "template.spec.y"]);
        assert_eq!(obj["template"]["kind"], "Pod");
        assert_eq!(obj["template"]["metadata"]["name"], "p");
        assert!(validate(&s, &obj).is_empty());
    }

    #[test]
    fn additional_properties_false_reports_forbidden_property() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"a": {"type": "string"}}, "additionalProperties": false}}});
        let e = validate(&s, &json!({"spec": {"a": "x", "b": 1}}));
        let e = only(&e);
        assert_eq!(e.field, "spec");
        assert_eq!(
            e.message,
            r#"Invalid value: "b": spec.b in body is a forbidden property"#
        );
    }

    #[test]
    fn additional_properties_schema_is_a_map_of_strings() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}}}}}});
        let mut obj = json!({"spec": {"labels": {"a": "x", "b": "yy"}}});
        assert!(prune(&s, &mut obj).is_empty());
        assert_eq!(obj, json!({"spec": {"labels": {"a": "x", "b": "yy"}}}));
        assert!(validate(&s, &obj).is_empty());

        let errs = validate(&s, &json!({"spec": {"labels": {"a": 1, "b": "long"}}}));
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "spec.labels.a");
        assert_eq!(
            errs[0].message,
            r#"Invalid value: "integer": spec.labels.a in body must be of type string: "integer""#
        );
        assert_eq!(errs[1].reason, "FieldValueTooLong");
        assert_eq!(errs[1].field, "spec.labels.b");
        assert_eq!(errs[1].message, "Too long: may not be more than 3 bytes");
    }

    #[test]
    fn additional_properties_schema_prunes_inside_values() {
        let s = json!({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"keep": {"type": "integer"}}}}}});
        let mut obj = json!({"m": {"k1": {"keep": 1, "drop": 2}}});
        assert_eq!(prune(&s, &mut obj), ["m.k1.drop"]);
        assert_eq!(obj, json!({"m": {"k1": {"keep": 1}}}));
    }

    #[test]
    fn additional_properties_true_keeps_unknowns() {
        let s = json!({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": true}}});
        let mut obj = json!({"m": {"anything": {"x": 1}}});
        assert!(prune(&s, &mut obj).is_empty());
        assert!(validate(&s, &obj).is_empty());
    }

    fn defaulting_schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "replicas": {"type": "integer", "default": 1},
            "policy": {"type": "string", "default": "Allow"},
            "nullableWithDefault": {"type": "string", "nullable": true, "default": "d"},
            "noDefault": {"type": "string"},
            "resources": {"type": "object", "properties": {"cpu": {"type": "string", "default": "100m"}}},
            "template": {"type": "object", "default": {}, "properties": {
                "restart": {"type": "string", "default": "Always"}}},
            "ports": {"type": "array", "items": {"type": "object", "properties": {
                "protocol": {"type": "string", "default": "TCP"}, "port": {"type": "integer"}}}},
            "tags": {"type": "object", "additionalProperties": {"type": "string", "default": "none"}}
        }}}})
    }

    #[test]
    fn defaults_fill_absent_fields() {
        let mut obj = crontab(json!({"replicas": 3}));
        apply_defaults(&defaulting_schema(), &mut obj);
        assert_eq!(obj["spec"]["replicas"], 3);
        assert_eq!(obj["spec"]["policy"], "Allow");
        assert_eq!(
            obj["metadata"],
            json!({"name": "my-new-cron-object", "namespace": "default"})
        );
    }

    #[test]
    fn nested_defaults_apply_only_when_parent_exists() {
        let mut obj = json!({"spec": {}});
        apply_defaults(&defaulting_schema(), &mut obj);
        assert!(obj["spec"].get("resources").is_none(), "no parent, no nested default");
        let mut obj = json!({"spec": {"resources": {}}});
        apply_defaults(&defaulting_schema(), &mut obj);
        assert_eq!(obj["spec"]["resources"], json!({"cpu": "100m"}));
        let mut obj = json!({});
        apply_defaults(&defaulting_schema(), &mut obj);
        assert_eq!(obj, json!({}), "spec itself has no default");
    }

    #[test]
    fn defaulted_parent_object_gets_its_nested_defaults() {
        let mut obj = json!({"spec": {}});
        apply_defaults(&defaulting_schema(), &mut obj);
        assert_eq!(obj["spec"]["template"], json!({"restart": "Always"}));
    }

    #[test]
    fn defaults_apply_to_list_items_and_map_values() {
        let mut obj =
            json!({"spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}], "tags": {"a": null, "b": "x"}}});
        apply_defaults(&defaulting_schema(), &mut obj);
        assert_eq!(
            obj["spec"]["ports"],
            json!([{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}])
        );
        assert_eq!(obj["spec"]["tags"], json!({"a": "none", "b": "x"}));
    }

    #[test]
    fn null_in_non_nullable_field_is_defaulted_or_dropped() {
        let mut obj = json!({"spec": {"policy": null, "noDefault": null, "nullableWithDefault": null}});
        apply_defaults(&defaulting_schema(), &mut obj);
        assert_eq!(obj["spec"]["policy"], "Allow");
        assert!(obj["spec"].get("noDefault").is_none());
        assert_eq!(obj["spec"]["nullableWithDefault"], Value::Null, "nullable null stays");
    }

    #[test]
    fn nullable_allows_null_and_non_nullable_reports_null_type() {
        let s = json!({"type": "object", "properties": {
            "a": {"type": "string", "nullable": true}, "b": {"type": "string"}}});
        let e = validate(&s, &json!({"a": null, "b": null}));
        let e = only(&e);
        assert_eq!(e.field, "b");
        assert_eq!(
            e.message,
            r#"Invalid value: "null": b in body must be of type string: "null""#
        );
    }

    #[test]
    fn int_or_string_accepts_both_and_rejects_others() {
        let s = json!({"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": true}}});
        assert!(validate(&s, &json!({"port": 8080})).is_empty());
        assert!(validate(&s, &json!({"port": "http"})).is_empty());
        let e = validate(&s, &json!({"port": true}));
        let e = only(&e);
        assert_eq!(e.reason, "FieldValueTypeInvalid");
        assert_eq!(
            e.message,
            r#"Invalid value: "boolean": port in body must be of type integer,string: "boolean""#
        );
        assert_eq!(only(&validate(&s, &json!({"port": 1.5}))).field, "port");
        assert!(check_structural(&s).is_empty());
    }

    #[test]
    fn int_or_string_with_any_of_idiom_is_structural_and_valid() {
        let s = json!({"type": "object", "properties": {"port": {"x-kubernetes-int-or-string": true,
            "anyOf": [{"type": "integer"}, {"type": "string"}]}}});
        assert!(check_structural(&s).is_empty(), "{:?}", check_structural(&s));
        assert!(validate(&s, &json!({"port": "x"})).is_empty());
        assert_eq!(validate(&s, &json!({"port": {}})).len(), 1);
    }

    fn list_map_schema() -> Value {
        json!({"type": "object", "properties": {"ports": {
            "type": "array", "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
            "items": {"type": "object", "required": ["containerPort"], "properties": {
                "containerPort": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"},
                "name": {"type": "string"}}}}}})
    }

    #[test]
    fn list_type_map_duplicate_keys_are_reported() {
        let obj = json!({"ports": [
            {"containerPort": 80, "protocol": "TCP", "name": "a"},
            {"containerPort": 80, "protocol": "UDP"},
            {"containerPort": 80, "protocol": "TCP", "name": "b"}]});
        let errs = validate(&list_map_schema(), &obj);
        let e = only(&errs);
        assert_eq!(e.reason, "FieldValueDuplicate");
        assert_eq!(e.field, "ports[2]");
        assert_eq!(e.message, r#"Duplicate value: {"containerPort":80,"protocol":"TCP"}"#);
        assert!(
            check_structural(&list_map_schema()).is_empty(),
            "{:?}",
            check_structural(&list_map_schema())
        );
    }

    #[test]
    fn list_type_map_distinct_keys_are_valid() {
        let obj =
            json!({"ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443, "protocol": "TCP"}]});
        assert!(validate(&list_map_schema(), &obj).is_empty());
    }

    #[test]
    fn list_type_set_duplicates_are_reported() {
        let s = json!({"type": "object", "properties": {"finalizers": {
            "type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}});
        let errs = validate(&s, &json!({"finalizers": ["a", "b", "a"]}));
        let e = only(&errs);
        assert_eq!(e.field, "finalizers[2]");
        assert_eq!(e.message, r#"Duplicate value: "a""#);
        assert!(validate(&s, &json!({"finalizers": ["a", "b"]})).is_empty());
    }

    #[test]
    fn string_length_and_item_count_limits() {
        let s = json!({"type": "object", "properties": {
            "name": {"type": "string", "minLength": 2, "maxLength": 1},
            "list": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 2}}});
        let errs = validate(&s, &json!({"list": [1, 2, 3], "name": "abc"}));
        let msgs: Vec<(&str, &str)> = errs.iter().map(|e| (e.reason, e.message.as_str())).collect();
        assert_eq!(
            msgs,
            [
                (
                    "FieldValueInvalid",
                    "Invalid value: 3: list in body should have at least 4 items"
                ),
                ("FieldValueTooMany", "Too many: 3: must have at most 2 items"),
                ("FieldValueTooLong", "Too long: may not be more than 1 byte"),
            ]
        );
        let e = validate(&s, &json!({"name": "é"}));
        assert_eq!(
            only(&e).message,
            r#"Invalid value: "é": name in body should be at least 2 chars long"#
        );
    }

    #[test]
    fn unique_items_and_property_counts() {
        let s = json!({"type": "object", "properties": {
            "u": {"type": "array", "uniqueItems": true, "items": {"type": "object"}},
            "p": {"type": "object", "minProperties": 2, "maxProperties": 3, "additionalProperties": {"type": "integer"}}}});
        let e = validate(&s, &json!({"u": [{"a": 1, "b": 2}, {"b": 2, "a": 1.0}]}));
        assert_eq!(
            only(&e).message,
            r#"Invalid value: "": u in body shouldn't contain duplicates"#
        );
        let e = validate(&s, &json!({"p": {"a": 1}}));
        assert_eq!(
            only(&e).message,
            "Invalid value: 1: p in body should have at least 2 properties"
        );
        let e = validate(&s, &json!({"p": {"a": 1, "b": 2, "c": 3, "d": 4}}));
        assert_eq!(only(&e).message, "Too many: 4: must have at most 3 items");
    }

    #[test]
    fn wrong_type_reports_only_the_type_error() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["a"]}}});
        let e = validate(&s, &json!({"spec": [1]}));
        assert_eq!(
            only(&e).message,
            r#"Invalid value: "array": spec in body must be of type object: "array""#
        );
    }

    #[test]
    fn list_items_are_validated_with_indexed_paths() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {"items": {
            "type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}}}}});
        let errs = validate(&s, &json!({"spec": {"items": [{"name": "a"}, {"name": 5}, {}]}}));
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "spec.items[1].name");
        assert_eq!(
            errs[0].message,
            r#"Invalid value: "integer": spec.items[1].name in body must be of type string: "integer""#
        );
        assert_eq!(errs[1].field, "spec.items[2].name");
        assert_eq!(errs[1].reason, "FieldValueRequired");
    }

    #[test]
    fn any_of_requires_one_match() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}}});
        assert!(validate(&s, &json!({"spec": {"b": "x"}})).is_empty());
        let errs = validate(&s, &json!({"spec": {}}));
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "spec");
        assert_eq!(
            errs[0].message,
            r#"Invalid value: "": "spec" must validate at least one schema (anyOf)"#
        );
        assert_eq!(errs[1].field, "spec.a");
        assert!(check_structural(&s).is_empty(), "{:?}", check_structural(&s));
    }

    #[test]
    fn one_of_requires_exactly_one_match() {
        let s = json!({"type": "object", "properties": {"v": {"type": "integer",
            "oneOf": [{"minimum": 0}, {"maximum": 10}]}}});
        assert!(validate(&s, &json!({"v": 20})).is_empty());
        let e = validate(&s, &json!({"v": 5}));
        assert_eq!(
            only(&e).message,
            r#"Invalid value: "": "v" must validate one and only one schema (oneOf). Found 2 valid alternatives"#
        );
    }

    #[test]
    fn all_of_and_not_are_checked() {
        let s = json!({"type": "object", "properties": {"v": {"type": "integer",
            "allOf": [{"minimum": 0}, {"maximum": 10}], "not": {"enum": [5]}}}});
        assert!(validate(&s, &json!({"v": 4})).is_empty());
        let errs = validate(&s, &json!({"v": 11}));
        assert_eq!(errs.len(), 2);
        assert_eq!(
            errs[0].message,
            r#"Invalid value: "": "v" must validate all the schemas (allOf)"#
        );
        assert_eq!(
            errs[1].message,
            "Invalid value: 11: v in body should be less than or equal to 10"
        );
        let e = validate(&s, &json!({"v": 5}));
        assert_eq!(
            only(&e).message,
            r#"Invalid value: "": "v" must not validate the schema (not)"#
        );
    }

    #[test]
    fn printer_cell_reads_common_paths() {
        let obj = json!({
            "metadata": {"labels": {"app": "web", "app.kubernetes.io/name": "n"}, "creationTimestamp": "2024-01-02T03:04:05Z"},
            "spec": {"replicas": 3, "ratio": 0.5, "paused": false, "image": "nginx",
                     "x": [{"y": "a"}, {"y": "b"}, {"z": 1}], "big": 2.9},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]}
        });
        assert_eq!(printer_cell(&obj, ".spec.replicas", "integer"), json!(3));
        assert_eq!(printer_cell(&obj, ".spec.big", "integer"), json!(2));
        assert_eq!(printer_cell(&obj, ".spec.ratio", "number"), json!(0.5));
        assert_eq!(printer_cell(&obj, ".spec.paused", "boolean"), json!(false));
        assert_eq!(printer_cell(&obj, ".spec.image", "string"), json!("nginx"));
        assert_eq!(printer_cell(&obj, ".spec.replicas", "string"), json!("3"));
        assert_eq!(
            printer_cell(&obj, ".metadata.creationTimestamp", "date"),
            json!("2024-01-02T03:04:05Z")
        );
        assert_eq!(
            printer_cell(&obj, ".status.conditions[0].type", "string"),
            json!("Ready")
        );
        assert_eq!(
            printer_cell(&obj, ".status.conditions[-1].type", "string"),
            json!("Synced")
        );
        assert_eq!(printer_cell(&obj, ".metadata.labels.app", "string"), json!("web"));
        assert_eq!(
            printer_cell(&obj, ".metadata.labels['app.kubernetes.io/name']", "string"),
            json!("n")
        );
        assert_eq!(
            printer_cell(&obj, ".metadata.labels.app\\.kubernetes\\.io/name", "string"),
            json!("n")
        );
        assert_eq!(printer_cell(&obj, ".spec.x[*].y", "string"), json!("a,b"));
        assert_eq!(printer_cell(&obj, "{.spec.image}", "string"), json!("nginx"));
        assert_eq!(printer_cell(&obj, "$.spec.image", "string"), json!("nginx"));
        assert_eq!(
            printer_cell(&obj, r#".status.conditions[?(@.type=="Ready")].status"#, "string"),
            json!("True")
        );
        assert_eq!(
            printer_cell(&obj, ".status.conditions[?(@.type!='Ready')].status", "string"),
            json!("False")
        );
    }

    #[test]
    fn printer_cell_missing_or_mistyped_is_null() {
        let obj = json!({"spec": {"replicas": "three", "list": []}});
        assert_eq!(printer_cell(&obj, ".spec.missing", "string"), Value::Null);
        assert_eq!(printer_cell(&obj, ".spec.replicas", "integer"), Value::Null);
        assert_eq!(printer_cell(&obj, ".spec.list[0]", "string"), Value::Null);
        assert_eq!(printer_cell(&obj, ".spec.replicas", "unknown-type"), Value::Null);
        for bad in [
            "",
            "[",
            "..a",
            "[?(",
            "{",
            "$",
            ".spec[",
            ".spec[1:2]",
            "[?(@.a==)]",
            "[']",
            "[?(x)]",
        ] {
            let _ = printer_cell(&obj, bad, "string");
        }
    }

    #[test]
    fn check_structural_flags_property_without_type() {
        let s = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "cronSpec": {"description": "no type here"}}}}});
        assert_eq!(
            check_structural(&s),
            ["openAPIV3Schema.properties[spec].properties[cronSpec].type: Required value: must not be empty for specified object fields"]
        );
    }

    #[test]
    fn check_structural_flags_forbidden_constructs() {
        let s = json!({
            "type": "object",
            "properties": {
                "a": {"$ref": "#/definitions/x", "type": "string"},
                "b": {"type": "array", "items": [{"type": "string"}]},
                "c": {"type": "array"},
                "d": {"type": "object", "additionalProperties": false},
                "e": {"type": "array", "uniqueItems": true, "items": {"type": "string"}},
                "f": {"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "object"}},
                "g": {"type": "string", "anyOf": [{"type": "string"}]},
                "h": {"type": "object", "anyOf": [{"properties": {"nope": {"minLength": 1}}}]},
                "i": {"type": "strin"},
                "j": {"type": "object", "x-kubernetes-preserve-unknown-fields": false},
                "k": {"type": "integer", "default": "str"},
                "l": {"type": "array", "items": {"description": "untyped"}}
            }
        });
        let msgs = check_structural(&s);
        let expect = [
            "openAPIV3Schema.properties[a].$ref: Forbidden: $ref is not supported",
            "openAPIV3Schema.properties[b].items: Forbidden: items must be a schema object and not an array",
            "openAPIV3Schema.properties[c].items: Required value: must be specified",
            "openAPIV3Schema.properties[d].additionalProperties: Forbidden: additionalProperties cannot be set to false",
            "openAPIV3Schema.properties[e].uniqueItems: Forbidden",
            "openAPIV3Schema.properties[f].x-kubernetes-list-map-keys: Required value",
            "openAPIV3Schema.properties[g].anyOf[0].type: Forbidden: must be empty to be structural",
            "openAPIV3Schema.properties[h].anyOf[0].properties[nope]: Required value",
            r#"openAPIV3Schema.properties[i].type: Unsupported value: "strin""#,
            "openAPIV3Schema.properties[j].x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined",
            r#"openAPIV3Schema.properties[k].default: Invalid value: "string": default in body must be of type integer: "string""#,
            "openAPIV3Schema.properties[l].items.type: Required value: must not be empty for specified array items",
        ];
        for e in expect {
            assert!(msgs.iter().any(|m| m.starts_with(e)), "missing {e:?} in {msgs:#?}");
        }
        assert_eq!(msgs.len(), expect.len(), "{msgs:#?}");
    }

    #[test]
    fn check_structural_requires_object_root() {
        assert_eq!(
            check_structural(&json!({})),
            ["openAPIV3Schema.type: Required value: must not be empty at the root"]
        );
        assert_eq!(
            check_structural(&json!({"type": "string"})),
            [r#"openAPIV3Schema.type: Invalid value: "string": must be object at the root"#]
        );
        assert_eq!(
            check_structural(&json!("nope")),
            [r#"openAPIV3Schema: Invalid value: "nope": must be a schema object"#]
        );
    }

    #[test]
    fn check_structural_accepts_untyped_preserve_and_int_or_string_nodes() {
        let s = json!({"type": "object", "properties": {
            "raw": {"x-kubernetes-preserve-unknown-fields": true},
            "port": {"x-kubernetes-int-or-string": true},
            "meta": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "n": {"type": "number", "default": 1.5, "minimum": 0}
        }});
        assert!(check_structural(&s).is_empty(), "{:?}", check_structural(&s));
    }

    #[test]
    fn check_structural_rejects_root_metadata_beyond_name() {
        let s = json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 10}, "labels": {"type": "object"}}}}});
        let msgs = check_structural(&s);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(msgs[0].starts_with("openAPIV3Schema.properties[metadata]: Forbidden"));
    }

    fn nested(depth: usize, leaf: Value, wrap: impl Fn(Value) -> Value) -> Value {
        let mut v = leaf;
        for _ in 0..depth {
            v = wrap(v);
        }
        v
    }

    #[test]
    fn deeply_nested_schema_and_object_do_not_overflow() {
        // Past the cap but shallow enough that dropping the Values stays cheap
        // (serde_json itself refuses to parse beyond 128 levels).
        let schema = nested(
            150,
            json!({"type": "string"}),
            |s| json!({"type": "object", "properties": {"a": s}}),
        );
        let mut obj = nested(150, json!({"b": 1}), |o| json!({"a": o}));
        let _ = prune(&schema, &mut obj);
        apply_defaults(&schema, &mut obj);
        let errs = validate(&schema, &obj);
        assert!(errs.iter().any(|e| e.message.contains("nested deeper")), "{errs:?}");
        let msgs = check_structural(&schema);
        assert!(msgs.iter().any(|m| m.contains("nested deeper")));
        let junctors = nested(
            40,
            json!({"minimum": 1}),
            |s| json!({"anyOf": [{"not": {"allOf": [s]}}]}),
        );
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer", "allOf": [junctors]}}});
        let _ = check_structural(&schema);
        let _ = validate(&schema, &json!({"n": 1}));
    }

    #[test]
    fn malformed_schemas_do_not_panic() {
        let schemas = [
            json!(null),
            json!(42),
            json!({"type": 7, "properties": [1], "items": "x", "required": "spec", "enum": {}}),
            json!({"type": "object", "properties": {"a": "string", "b": null, "c": {"items": 3}}}),
            json!({"type": "array", "items": [], "minItems": -1, "maxItems": "x", "x-kubernetes-list-type": 3,
                   "x-kubernetes-list-map-keys": [1, null]}),
            json!({"type": "object", "allOf": "x", "anyOf": [1, null], "oneOf": [], "not": 3,
                   "additionalProperties": 5, "maximum": "big", "multipleOf": 0}),
            json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"], "items": {"properties": {"k": 1}}}),
        ];
        let objs = [
            json!(null),
            json!({"a": [1, {"b": null}], "c": "s"}),
            json!([{"k": 1}, {"k": 1}, 2]),
            json!(1.5),
        ];
        for s in &schemas {
            let _ = check_structural(s);
            for o in &objs {
                let mut o = o.clone();
                let _ = prune(s, &mut o);
                apply_defaults(s, &mut o);
                let _ = validate(s, &o);
            }
        }
    }
}
