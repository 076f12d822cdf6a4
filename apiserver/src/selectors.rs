//! Kubernetes label and field selectors: parsing of the query-string forms,
//! conversion from `metav1.LabelSelector` JSON, and matching against objects
//! held as `serde_json::Value`.
//!
//! Syntax, ordering and error texts follow apimachinery (`pkg/labels`,
//! `pkg/fields`) so clients see the same behaviour as with a real apiserver.

use crate::error::go_quote;
use serde_json::{Map, Value};
use std::fmt;

// ---------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelOp {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: LabelOp,
    /// Sorted and de-duplicated, so equal selectors compare equal whatever
    /// order their values were written in.
    values: Vec<String>,
}

impl Requirement {
    /// Validates like apimachinery's NewRequirement; the error paths ("key",
    /// "values[i][key]") are the ones it reports.
    fn new(key: &str, op: LabelOp, vals: Vec<String>) -> Result<Requirement, String> {
        let mut errs: Vec<String> = Vec::new();
        let key_errs = qualified_name_errors(key);
        if !key_errs.is_empty() {
            errs.push(invalid("key", &go_quote(key), &key_errs.join("; ")));
        }
        match op {
            LabelOp::In | LabelOp::NotIn if vals.is_empty() => errs.push(invalid(
                "values",
                &go_string_slice(&vals),
                "for 'in', 'notin' operators, values set can't be empty",
            )),
            LabelOp::Equals | LabelOp::DoubleEquals | LabelOp::NotEquals if vals.len() != 1 => errs
                .push(invalid(
                    "values",
                    &go_string_slice(&vals),
                    "exact-match compatibility requires one single value",
                )),
            LabelOp::Exists | LabelOp::DoesNotExist if !vals.is_empty() => errs.push(invalid(
                "values",
                &go_string_slice(&vals),
                "values set must be empty for exists and does not exist",
            )),
            LabelOp::GreaterThan | LabelOp::LessThan => {
                if vals.len() != 1 {
                    errs.push(invalid(
                        "values",
                        &go_string_slice(&vals),
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in vals.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(invalid(
                            &format!("values[{i}]"),
                            &go_quote(v),
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in vals.iter().enumerate() {
            let verrs = label_value_errors(v);
            if !verrs.is_empty() {
                errs.push(invalid(
                    &format!("values[{i}][{key}]"),
                    &go_quote(v),
                    &verrs.join("; "),
                ));
            }
        }
        if !errs.is_empty() {
            return Err(aggregate(errs));
        }
        let mut values = vals;
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_string(),
            op,
            values,
        })
    }

    fn matches(&self, labels: &Map<String, Value>) -> bool {
        let got = labels.get(&self.key).map(scalar_to_string);
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.op {
            LabelOp::Equals | LabelOp::DoubleEquals | LabelOp::In => got.is_some_and(|v| has(&v)),
            LabelOp::NotEquals | LabelOp::NotIn => got.is_none_or(|v| !has(&v)),
            LabelOp::Exists => got.is_some(),
            LabelOp::DoesNotExist => got.is_none(),
            LabelOp::GreaterThan | LabelOp::LessThan => {
                let Some(Ok(have)) = got.map(|v| v.parse::<i64>()) else {
                    return false;
                };
                let [want] = self.values.as_slice() else {
                    return false;
                };
                let Ok(want) = want.parse::<i64>() else {
                    return false;
                };
                if self.op == LabelOp::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op == LabelOp::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.op {
            LabelOp::Exists | LabelOp::DoesNotExist => return Ok(()),
            LabelOp::Equals => "=",
            LabelOp::DoubleEquals => "==",
            LabelOp::NotEquals => "!=",
            LabelOp::In => " in ",
            LabelOp::NotIn => " notin ",
            LabelOp::GreaterThan => ">",
            LabelOp::LessThan => "<",
        };
        f.write_str(op)?;
        let set = matches!(self.op, LabelOp::In | LabelOp::NotIn);
        if set {
            f.write_str("(")?;
        }
        f.write_str(&self.values.join(","))?;
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A set of label requirements, all of which must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSelector {
    /// Stable-sorted by key, as apimachinery orders them for its string form.
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parse the `labelSelector` query string form (already URL-decoded).
    /// The empty string selects everything.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut p = Parser {
            items: lex(s),
            pos: 0,
        };
        let mut requirements = p.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// From a `metav1.LabelSelector` JSON object; null selects everything.
    pub fn from_json(v: &Value) -> Result<LabelSelector, String> {
        let obj = match v {
            Value::Null => {
                return Ok(LabelSelector {
                    requirements: Vec::new(),
                })
            }
            Value::Object(o) => o,
            _ => return Err("label selector must be a JSON object".to_string()),
        };
        let mut requirements = Vec::new();
        match obj.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(ml)) => {
                // Key order, so the first error reported is deterministic.
                let mut keys: Vec<&String> = ml.keys().collect();
                keys.sort();
                for k in keys {
                    let val = match ml.get(k) {
                        Some(Value::String(s)) => s.clone(),
                        _ => return Err(format!("matchLabels[{k}]: value must be a string")),
                    };
                    requirements.push(Requirement::new(k, LabelOp::Equals, vec![val])?);
                }
            }
            Some(_) => return Err("matchLabels must be an object".to_string()),
        }
        match obj.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(exprs)) => {
                for (i, e) in exprs.iter().enumerate() {
                    requirements.push(expression_requirement(i, e)?);
                }
            }
            Some(_) => return Err("matchExpressions must be an array".to_string()),
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Matches the object's `metadata.labels` (absent = no labels).
    pub fn matches_object(&self, obj: &Value) -> bool {
        match obj.get("metadata").and_then(|m| m.get("labels")) {
            Some(Value::Object(labels)) => self.matches(labels),
            _ => self.matches(&Map::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

fn expression_requirement(i: usize, e: &Value) -> Result<Requirement, String> {
    let Value::Object(e) = e else {
        return Err(format!("matchExpressions[{i}] must be an object"));
    };
    let key = match e.get("key") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("matchExpressions[{i}].key must be a string")),
    };
    let op_name = match e.get("operator") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(format!("matchExpressions[{i}].operator must be a string")),
    };
    let op = match op_name {
        "In" => LabelOp::In,
        "NotIn" => LabelOp::NotIn,
        "Exists" => LabelOp::Exists,
        "DoesNotExist" => LabelOp::DoesNotExist,
        other => {
            return Err(format!(
                "{} is not a valid label selector operator",
                go_quote(other)
            ))
        }
    };
    let mut values = Vec::new();
    match e.get("values") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for v in a {
                match v {
                    Value::String(s) => values.push(s.clone()),
                    _ => return Err(format!("matchExpressions[{i}].values must be strings")),
                }
            }
        }
        Some(_) => return Err(format!("matchExpressions[{i}].values must be an array")),
    }
    Requirement::new(key, op, values)
}

// --- lexer -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    End,
    OpenPar,
    ClosePar,
    Comma,
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    Greater,
    Less,
    In,
    NotIn,
    Ident,
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

/// Tokenises the whole input up front; the last item is always `End`.
fn lex(s: &str) -> Vec<(Tok, String)> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < chars.len() && is_ws(chars[i]) {
            i += 1;
        }
        let Some(&c) = chars.get(i) else {
            out.push((Tok::End, String::new()));
            return out;
        };
        if is_special(c) {
            // Every single symbol is a token; only "==" and "!=" are longer,
            // so greedy longest-match needs one character of lookahead.
            let two = chars.get(i + 1) == Some(&'=');
            let (tok, len) = match c {
                '=' if two => (Tok::DoubleEquals, 2),
                '!' if two => (Tok::NotEquals, 2),
                '=' => (Tok::Equals, 1),
                '!' => (Tok::Bang, 1),
                '(' => (Tok::OpenPar, 1),
                ')' => (Tok::ClosePar, 1),
                ',' => (Tok::Comma, 1),
                '>' => (Tok::Greater, 1),
                _ => (Tok::Less, 1),
            };
            out.push((tok, chars[i..i + len].iter().collect()));
            i += len;
        } else {
            let start = i;
            while i < chars.len() && !is_special(chars[i]) && !is_ws(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let tok = match word.as_str() {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Ident,
            };
            out.push((tok, word));
        }
    }
}

// --- parser ----------------------------------------------------------------

/// Where `in`/`notin` are keywords (operator position) or plain words
/// (keys and values, so `in in (in)` is legal).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Operator,
    Values,
}

struct Parser {
    items: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    fn peek(&self, ctx: Ctx) -> (Tok, String) {
        let (tok, lit) = self
            .items
            .get(self.pos)
            .cloned()
            .unwrap_or((Tok::End, String::new()));
        match tok {
            Tok::In | Tok::NotIn if ctx == Ctx::Values => (Tok::Ident, lit),
            _ => (tok, lit),
        }
    }

    fn next(&mut self, ctx: Ctx) -> (Tok, String) {
        let item = self.peek(ctx);
        self.pos += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.peek(Ctx::Values);
            match tok {
                Tok::Ident | Tok::Bang => {
                    let r = self
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(r);
                    let (t, l) = self.next(Ctx::Values);
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.peek(Ctx::Values);
                            if t2 != Tok::Ident && t2 != Tok::Bang {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ))
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let (mut tok, mut lit) = self.next(Ctx::Values);
        let negated = tok == Tok::Bang;
        if negated {
            (tok, lit) = self.next(Ctx::Values);
        }
        if tok != Tok::Ident {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let key = lit;
        let key_errs = qualified_name_errors(&key);
        if !key_errs.is_empty() {
            // apimachinery validates here with a nil field path.
            return Err(invalid("<nil>", &go_quote(&key), &key_errs.join("; ")));
        }
        if negated {
            return Requirement::new(&key, LabelOp::DoesNotExist, Vec::new());
        }
        let (after, _) = self.peek(Ctx::Values);
        if after == Tok::End || after == Tok::Comma {
            return Requirement::new(&key, LabelOp::Exists, Vec::new());
        }
        let (tok, lit) = self.next(Ctx::Operator);
        let op = match tok {
            Tok::In => LabelOp::In,
            Tok::NotIn => LabelOp::NotIn,
            Tok::Equals => LabelOp::Equals,
            Tok::DoubleEquals => LabelOp::DoubleEquals,
            Tok::NotEquals => LabelOp::NotEquals,
            Tok::Greater => LabelOp::GreaterThan,
            Tok::Less => LabelOp::LessThan,
            _ => {
                return Err(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                ))
            }
        };
        let values = match op {
            LabelOp::In | LabelOp::NotIn => self.value_set()?,
            _ => self.exact_value()?,
        };
        Requirement::new(&key, op, values)
    }

    /// `(a,b,...)`; empty elements and `()` stand for the empty value.
    fn value_set(&mut self) -> Result<Vec<String>, String> {
        let (tok, lit) = self.next(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.peek(Ctx::Values);
        match tok {
            Tok::Ident | Tok::Comma => {
                let set = self.identifier_list()?;
                let (tok, _) = self.next(Ctx::Values);
                if tok != Tok::ClosePar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(set)
            }
            Tok::ClosePar => {
                self.next(Ctx::Values);
                Ok(vec![String::new()])
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    /// The list inside the parentheses; stops before the closing one.
    fn identifier_list(&mut self) -> Result<Vec<String>, String> {
        let mut set: Vec<String> = Vec::new();
        loop {
            let (tok, lit) = self.next(Ctx::Values);
            match tok {
                Tok::Ident => {
                    set.push(lit);
                    let (t2, l2) = self.peek(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosePar => return Ok(set),
                        _ => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    // A comma with nothing before it, after it, or between
                    // two commas contributes the empty value.
                    if set.is_empty() {
                        set.push(String::new());
                    }
                    let (t2, _) = self.peek(Ctx::Values);
                    if t2 == Tok::ClosePar {
                        set.push(String::new());
                        return Ok(set);
                    }
                    if t2 == Tok::Comma {
                        self.next(Ctx::Values);
                        set.push(String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    /// The single value after `=`, `==`, `!=`, `>` or `<`; may be empty.
    fn exact_value(&mut self) -> Result<Vec<String>, String> {
        let (tok, _) = self.peek(Ctx::Values);
        if tok == Tok::End || tok == Tok::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.next(Ctx::Values);
        if tok == Tok::Ident {
            Ok(vec![lit])
        } else {
            Err(format!("found '{lit}', expected: identifier"))
        }
    }
}

// --- validation (apimachinery util/validation texts) -----------------------

const QNAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QNAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let eg: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{msg} (e.g. {}regex used for validation is '{fmt}')",
        eg.join("or ")
    )
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        match (b.first(), b.last()) {
            (Some(f), Some(l)) => {
                (f.is_ascii_lowercase() || f.is_ascii_digit())
                    && (l.is_ascii_lowercase() || l.is_ascii_digit())
                    && b.iter()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            }
            _ => false,
        }
    })
}

fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 characters".to_string());
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push(format!(
                        "prefix part {}",
                        regex_error(
                            DNS1123_SUBDOMAIN_MSG,
                            DNS1123_SUBDOMAIN_FMT,
                            &["example.com"]
                        )
                    ));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(QNAME_MSG, QNAME_FMT, &["MyName", "my.name", "123-abc"])
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(QNAME_MSG, QNAME_FMT, &["MyName", "my.name", "123-abc"])
        ));
    }
    errs
}

fn label_value_errors(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !is_qualified_name_part(v) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            &format!("({QNAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// One field.Invalid error as apimachinery prints it.
fn invalid(path: &str, bad_value: &str, detail: &str) -> String {
    format!("{path}: Invalid value: {bad_value}: {detail}")
}

/// Like apimachinery's error aggregate: one error alone, several in brackets.
fn aggregate(errs: Vec<String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errs {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    if seen.len() == 1 {
        seen.concat()
    } else {
        format!("[{}]", seen.join(", "))
    }
}

/// Go's `%#v` of a `[]string`, as apimachinery shows bad value lists.
fn go_string_slice(v: &[String]) -> String {
    if v.is_empty() {
        return "[]string(nil)".to_string();
    }
    let items: Vec<String> = v.iter().map(|s| go_quote(s)).collect();
    format!("[]string{{{}}}", items.join(", "))
}

/// String form of a JSON scalar for comparisons: labels and field values
/// are strings in Kubernetes, but tolerate other scalar types.
fn scalar_to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------
// Field selectors
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldOp {
    Eq,
    NotEq,
}

#[derive(Debug, Clone, PartialEq)]
struct FieldTerm {
    field: String,
    op: FieldOp,
    /// Unescaped value.
    value: String,
}

/// A set of `field=value` / `field!=value` terms, all of which must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

/// Boolean fields that Kubernetes exposes as "false" when unset; our
/// objects omit false booleans, so a missing one must not read as "".
const FALSE_WHEN_MISSING: &[&str] = &["spec.unschedulable", "spec.hostNetwork"];

impl FieldSelector {
    /// Parse the `fieldSelector` query string form (already URL-decoded).
    /// The empty string selects everything.
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut parts = split_terms(s);
        // apimachinery sorts the raw terms for a deterministic order.
        parts.sort();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((field, op, rhs)) = split_term(part) else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let value = unescape_value(rhs)?;
            terms.push(FieldTerm {
                field: field.to_string(),
                op,
                value,
            });
        }
        Ok(FieldSelector { terms })
    }

    /// Rejects any field not in `supported` (metadata.name and
    /// metadata.namespace are always allowed).
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), String> {
        for t in &self.terms {
            let f = t.field.as_str();
            if f != "metadata.name" && f != "metadata.namespace" && !supported.contains(&f) {
                return Err(format!("field label not supported: {f}"));
            }
        }
        Ok(())
    }

    /// The name required by a `metadata.name=X` term, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.op == FieldOp::Eq && t.field == "metadata.name")
            .map(|t| t.value.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let got = field_value(obj, &t.field);
            match t.op {
                FieldOp::Eq => got == t.value,
                FieldOp::NotEq => got != t.value,
            }
        })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// Reads a dotted path; anything missing or non-scalar reads as "".
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => {
                return if FALSE_WHEN_MISSING.contains(&path) {
                    "false".to_string()
                } else {
                    String::new()
                };
            }
        }
    }
    if cur.is_null() && FALSE_WHEN_MISSING.contains(&path) {
        return "false".to_string();
    }
    scalar_to_string(cur)
}

/// Splits on commas not preceded by a backslash escape.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// Splits at the first operator; field names take no escapes.
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        // "==" before "=" so no '=' is left on the value.
        for (tok, op) in [
            ("!=", FieldOp::NotEq),
            ("==", FieldOp::Eq),
            ("=", FieldOp::Eq),
        ] {
            if let Some(value) = rest.strip_prefix(tok) {
                return Some((&term[..i], op, value));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            match c {
                '\\' | ',' | '=' | '!' => out.push(c),
                _ => {
                    return Err(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    ))
                }
            }
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            // Go prints the rune with %v, i.e. as its code point number.
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                ))
            }
            _ => out.push(c),
        }
    }
    if escaped {
        return Err("invalid field selector: invalid escape sequence: \\".to_string());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn sel(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(x) => x,
            Err(e) => panic!("parse {s:?} failed: {e}"),
        }
    }

    fn err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(x) => panic!("parse {s:?} unexpectedly succeeded: {x:?}"),
            Err(e) => e,
        }
    }

    fn fsel(s: &str) -> FieldSelector {
        match FieldSelector::parse(s) {
            Ok(x) => x,
            Err(e) => panic!("field parse {s:?} failed: {e}"),
        }
    }

    fn ferr(s: &str) -> String {
        match FieldSelector::parse(s) {
            Ok(x) => panic!("field parse {s:?} unexpectedly succeeded: {x:?}"),
            Err(e) => e,
        }
    }

    // --- label selector: parsing and matching ---

    #[test]
    fn label_empty_string_is_empty_and_matches_everything() {
        let s = sel("");
        assert!(s.is_empty());
        assert!(s.matches(&labels(json!({}))));
        assert!(s.matches(&labels(json!({"a": "b"}))));
        assert_eq!(s.to_string(), "");
    }

    #[test]
    fn label_whitespace_only_is_empty() {
        assert!(sel("  \t ").is_empty());
    }

    #[test]
    fn label_equals_matches_only_exact_value() {
        let s = sel("app=nginx");
        assert!(!s.is_empty());
        assert!(s.matches(&labels(json!({"app": "nginx", "x": "y"}))));
        assert!(!s.matches(&labels(json!({"app": "apache"}))));
        assert!(!s.matches(&labels(json!({}))));
    }

    #[test]
    fn label_double_equals_matches_like_equals_and_keeps_its_spelling() {
        let s = sel("app==nginx");
        assert!(s.matches(&labels(json!({"app": "nginx"}))));
        assert!(!s.matches(&labels(json!({"app": "x"}))));
        assert_eq!(s.to_string(), "app==nginx");
    }

    #[test]
    fn label_not_equals_matches_missing_key_and_other_values() {
        let s = sel("tier!=db");
        assert!(s.matches(&labels(json!({}))));
        assert!(s.matches(&labels(json!({"tier": "web"}))));
        assert!(!s.matches(&labels(json!({"tier": "db"}))));
    }

    #[test]
    fn label_in_with_spaces_in_value_list() {
        let s = sel("env in (prod, dev)");
        assert!(s.matches(&labels(json!({"env": "prod"}))));
        assert!(s.matches(&labels(json!({"env": "dev"}))));
        assert!(!s.matches(&labels(json!({"env": "qa"}))));
        assert!(!s.matches(&labels(json!({}))));
        assert_eq!(s.to_string(), "env in (dev,prod)");
    }

    #[test]
    fn label_notin_matches_missing_key_and_values_outside_set() {
        let s = sel("env notin (prod)");
        assert!(s.matches(&labels(json!({}))));
        assert!(s.matches(&labels(json!({"env": "dev"}))));
        assert!(!s.matches(&labels(json!({"env": "prod"}))));
    }

    #[test]
    fn label_bare_key_means_exists() {
        let s = sel("app");
        assert!(s.matches(&labels(json!({"app": ""}))));
        assert!(!s.matches(&labels(json!({"other": "x"}))));
        assert_eq!(s.to_string(), "app");
    }

    #[test]
    fn label_bang_key_means_does_not_exist() {
        for input in ["!app", "! app", " !app "] {
            let s = sel(input);
            assert!(s.matches(&labels(json!({"other": "x"}))), "{input}");
            assert!(!s.matches(&labels(json!({"app": "x"}))), "{input}");
            assert_eq!(s.to_string(), "!app");
        }
    }

    #[test]
    fn label_greater_and_less_than_compare_as_integers() {
        let gt = sel("replicas>5");
        assert!(gt.matches(&labels(json!({"replicas": "10"}))));
        assert!(!gt.matches(&labels(json!({"replicas": "5"}))));
        assert!(!gt.matches(&labels(json!({"replicas": "many"}))));
        assert!(!gt.matches(&labels(json!({}))));
        let lt = sel("replicas<5");
        assert!(lt.matches(&labels(json!({"replicas": "3"}))));
        assert!(!lt.matches(&labels(json!({"replicas": "7"}))));
        assert_eq!(gt.to_string(), "replicas>5");
        assert_eq!(lt.to_string(), "replicas<5");
    }

    #[test]
    fn label_greater_than_rejects_non_integer_value() {
        assert_eq!(
            err("replicas>abc"),
            "unable to parse requirement: values[0]: Invalid value: \"abc\": for 'Gt', 'Lt' operators, the value must be an integer"
        );
    }

    #[test]
    fn label_in_empty_parens_means_empty_value() {
        let s = sel("k in ()");
        assert!(s.matches(&labels(json!({"k": ""}))));
        assert!(!s.matches(&labels(json!({"k": "a"}))));
        assert!(!s.matches(&labels(json!({}))));
        assert_eq!(s.to_string(), "k in ()");
    }

    #[test]
    fn label_set_with_empty_elements_includes_empty_value() {
        let s = sel("x in (foo,,baz),y,z notin ()");
        assert_eq!(s.to_string(), "x in (,baz,foo),y,z notin ()");
        assert!(s.matches(&labels(json!({"x": "", "y": "1"}))));
        assert!(s.matches(&labels(json!({"x": "baz", "y": "1", "z": "q"}))));
        assert!(!s.matches(&labels(json!({"x": "baz", "y": "1", "z": ""}))));
        assert_eq!(sel("x in (,a)").to_string(), "x in (,a)");
        assert_eq!(sel("x in (a,)").to_string(), "x in (,a)");
        assert_eq!(sel("x in (,)").to_string(), "x in ()");
    }

    #[test]
    fn label_equals_with_nothing_after_means_empty_value() {
        let s = sel("k=,j!=");
        assert!(s.matches(&labels(json!({"k": "", "j": "x"}))));
        assert!(!s.matches(&labels(json!({"k": "v"}))));
        assert_eq!(s.to_string(), "j!=,k=");
    }

    #[test]
    fn label_requirements_are_anded_with_whitespace_around_tokens() {
        let s = sel("  app = web ,  tier != db , env in ( a , b ) , !legacy ");
        assert!(s.matches(&labels(json!({"app": "web", "tier": "fe", "env": "a"}))));
        assert!(!s.matches(&labels(json!({"app": "web", "tier": "db", "env": "a"}))));
        assert!(!s.matches(&labels(json!({"app": "web", "env": "a", "legacy": "1"}))));
        assert!(!s.matches(&labels(json!({"app": "web", "env": "c"}))));
    }

    #[test]
    fn label_keywords_are_plain_words_as_keys_and_values() {
        let s = sel("in in (in,notin),notin=in");
        assert!(s.matches(&labels(json!({"in": "notin", "notin": "in"}))));
        assert_eq!(s.to_string(), "in in (in,notin),notin=in");
    }

    #[test]
    fn label_prefixed_keys_are_accepted() {
        let s = sel("app.kubernetes.io/name=nginx,example.com/x");
        assert!(s.matches(&labels(
            json!({"app.kubernetes.io/name": "nginx", "example.com/x": "1"})
        )));
    }

    #[test]
    fn label_parse_error_leading_comma() {
        assert_eq!(
            err(",a"),
            "found ',', expected: !, identifier, or 'end of string'"
        );
    }

    #[test]
    fn label_parse_error_trailing_comma() {
        assert_eq!(err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(err("a=b,,c"), "found ',', expected: identifier after ','");
    }

    #[test]
    fn label_parse_error_missing_comma_between_requirements() {
        assert_eq!(
            err("a=b c=d"),
            "found 'c', expected: ',' or 'end of string'"
        );
    }

    #[test]
    fn label_parse_error_unknown_operator() {
        assert_eq!(
            err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(
            err("a (b)"),
            "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"
        );
    }

    #[test]
    fn label_parse_error_bang_without_key() {
        assert_eq!(
            err("!"),
            "unable to parse requirement: found '', expected: identifier"
        );
        assert_eq!(
            err("!=a"),
            "found '!=', expected: !, identifier, or 'end of string'"
        );
    }

    #[test]
    fn label_parse_error_bang_key_followed_by_operator() {
        assert_eq!(err("!a=b"), "found '=', expected: ',' or 'end of string'");
    }

    #[test]
    fn label_parse_error_set_without_parens() {
        assert_eq!(
            err("a in b"),
            "unable to parse requirement: found 'b' expected: '('"
        );
        assert_eq!(
            err("a in"),
            "unable to parse requirement: found '' expected: '('"
        );
    }

    #[test]
    fn label_parse_error_unclosed_set() {
        assert_eq!(
            err("a in (b"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            err("a in (b c)"),
            "unable to parse requirement: found 'c', expected: ',' or ')'"
        );
        assert_eq!(
            err("a in (b,"),
            "unable to parse requirement: found '', expected: ',', or identifier"
        );
        assert_eq!(
            err("a in (=)"),
            "unable to parse requirement: found '=', expected: ',', ')' or identifier"
        );
    }

    #[test]
    fn label_parse_error_exact_value_not_identifier() {
        assert_eq!(
            err("a=(b)"),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert_eq!(err("a=b=c"), "found '=', expected: ',' or 'end of string'");
    }

    #[test]
    fn label_parse_error_invalid_key() {
        let e = err("-app=x");
        assert!(
            e.starts_with("unable to parse requirement: <nil>: Invalid value: \"-app\": name part must consist of alphanumeric characters"),
            "{e}"
        );
        assert!(
            e.contains("regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn label_parse_error_invalid_key_prefix_and_slashes() {
        let e = err("Example.com/app=x");
        assert!(
            e.contains("prefix part a lowercase RFC 1123 subdomain"),
            "{e}"
        );
        let e = err("/app");
        assert!(e.contains("prefix part must be non-empty"), "{e}");
        let e = err("a/b/c");
        assert!(e.contains("a qualified name must consist of"), "{e}");
        let e = err("example.com/");
        assert!(e.contains("name part must be non-empty"), "{e}");
    }

    #[test]
    fn label_parse_error_key_name_too_long() {
        let long = "a".repeat(64);
        let e = err(&long);
        assert!(
            e.contains("name part must be no more than 63 characters"),
            "{e}"
        );
        assert!(LabelSelector::parse(&"a".repeat(63)).is_ok());
        // The prefix does not count towards the 63.
        assert!(LabelSelector::parse(&format!("example.com/{}", "a".repeat(63))).is_ok());
    }

    #[test]
    fn label_parse_error_invalid_value() {
        let e = err("app=-x");
        assert!(
            e.starts_with("unable to parse requirement: values[0][app]: Invalid value: \"-x\": a valid label must be an empty string or consist of"),
            "{e}"
        );
        let e = err(&format!("app={}", "v".repeat(64)));
        assert!(e.contains("must be no more than 63 characters"), "{e}");
        let e = err("app in (ok,b@d)");
        assert!(e.contains("values[1][app]: Invalid value: \"b@d\""), "{e}");
    }

    #[test]
    fn label_parse_error_non_ascii_is_quoted_on_one_line() {
        let e = err("k=\u{1}é");
        assert!(e.contains("\"\\x01é\""), "{e}");
    }

    #[test]
    fn label_display_sorts_requirements_by_key_and_values() {
        let s = sel("zone notin (b,a),app=web,!debug,env in (prod,dev,prod)");
        assert_eq!(
            s.to_string(),
            "app=web,!debug,env in (dev,prod),zone notin (a,b)"
        );
    }

    #[test]
    fn label_display_round_trips() {
        for input in [
            "app=nginx,tier in (a,b)",
            "a==b,c!=d,e,!f,g notin (x,y),h>1,i<2",
            "k in (),j=,x in (,a)",
            "example.com/app in (in,notin)",
        ] {
            let s = sel(input);
            let again = sel(&s.to_string());
            assert_eq!(s, again, "{input}");
            assert_eq!(s.to_string(), again.to_string());
        }
    }

    #[test]
    fn label_matches_object_reads_metadata_labels() {
        let s = sel("app=web");
        assert!(s.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!s.matches_object(&json!({"metadata": {"labels": {"app": "db"}}})));
        assert!(!s.matches_object(&json!({"metadata": {}})));
        assert!(sel("!app").matches_object(&json!({"metadata": {"name": "x"}})));
        assert!(sel("!app").matches_object(&json!({})));
        assert!(sel("").matches_object(&json!(null)));
    }

    // --- label selector from metav1.LabelSelector JSON ---

    #[test]
    fn from_json_null_and_empty_object_select_everything() {
        assert!(LabelSelector::from_json(&json!(null))
            .map(|s| s.is_empty())
            .unwrap_or(false));
        assert!(LabelSelector::from_json(&json!({}))
            .map(|s| s.is_empty())
            .unwrap_or(false));
        let s = LabelSelector::from_json(&json!({"matchLabels": {}, "matchExpressions": []}));
        assert!(s.map(|s| s.is_empty()).unwrap_or(false));
    }

    #[test]
    fn from_json_match_labels_display_sorted_by_key() {
        let s = LabelSelector::from_json(&json!({"matchLabels": {"tier": "fe", "app": "nginx"}}));
        let s = s.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.to_string(), "app=nginx,tier=fe");
        assert!(s.matches(&labels(json!({"app": "nginx", "tier": "fe", "x": "y"}))));
        assert!(!s.matches(&labels(json!({"app": "nginx"}))));
    }

    #[test]
    fn from_json_match_expressions_all_operators() {
        let v = json!({
            "matchLabels": {"app": "nginx"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["b", "a"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "team", "operator": "Exists", "values": []}
            ]
        });
        let s = LabelSelector::from_json(&v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.to_string(),
            "app=nginx,!canary,env notin (prod),team,tier in (a,b)"
        );
        let ok = labels(json!({"app": "nginx", "tier": "a", "env": "dev", "team": "x"}));
        assert!(s.matches(&ok));
        let mut bad = ok.clone();
        bad.insert("canary".into(), json!("1"));
        assert!(!s.matches(&bad));
        let mut bad = ok.clone();
        bad.insert("env".into(), json!("prod"));
        assert!(!s.matches(&bad));
        let mut bad = ok.clone();
        bad.remove("team");
        assert!(!s.matches(&bad));
        let mut bad = ok;
        bad.insert("tier".into(), json!("c"));
        assert!(!s.matches(&bad));
    }

    #[test]
    fn from_json_equals_parse_of_its_display() {
        let v = json!({
            "matchLabels": {"app": "nginx"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a", "a"]}]
        });
        let s = LabelSelector::from_json(&v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.to_string(), "app=nginx,tier in (a,b)");
        assert_eq!(sel(&s.to_string()), s);
    }

    #[test]
    fn from_json_same_key_keeps_match_labels_first() {
        let v = json!({
            "matchLabels": {"app": "a"},
            "matchExpressions": [{"key": "app", "operator": "Exists"}]
        });
        let s = LabelSelector::from_json(&v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.to_string(), "app=a,app");
    }

    #[test]
    fn from_json_unknown_operator_is_an_error() {
        let v = json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]});
        assert_eq!(
            LabelSelector::from_json(&v),
            Err("\"Gt\" is not a valid label selector operator".to_string())
        );
    }

    #[test]
    fn from_json_in_and_notin_with_empty_values_are_errors() {
        for op in ["In", "NotIn"] {
            let v = json!({"matchExpressions": [{"key": "a", "operator": op, "values": []}]});
            assert_eq!(
                LabelSelector::from_json(&v),
                Err("values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty".to_string())
            );
            let v = json!({"matchExpressions": [{"key": "a", "operator": op}]});
            assert!(LabelSelector::from_json(&v).is_err());
        }
    }

    #[test]
    fn from_json_exists_with_values_is_an_error() {
        let v = json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]});
        assert_eq!(
            LabelSelector::from_json(&v),
            Err("values: Invalid value: []string{\"x\"}: values set must be empty for exists and does not exist".to_string())
        );
    }

    #[test]
    fn from_json_invalid_key_and_value_are_errors() {
        let v = json!({"matchLabels": {"bad key": "x"}});
        let e = LabelSelector::from_json(&v).err().unwrap_or_default();
        assert!(
            e.starts_with("key: Invalid value: \"bad key\": name part"),
            "{e}"
        );
        let v = json!({"matchLabels": {"app": "bad value"}});
        let e = LabelSelector::from_json(&v).err().unwrap_or_default();
        assert!(
            e.starts_with("values[0][app]: Invalid value: \"bad value\""),
            "{e}"
        );
        // Several problems are reported together, in brackets.
        let v = json!({"matchExpressions": [{"key": "-k", "operator": "In", "values": ["-v"]}]});
        let e = LabelSelector::from_json(&v).err().unwrap_or_default();
        assert!(e.starts_with("[key: Invalid value: \"-k\""), "{e}");
        assert!(e.contains(", values[0][-k]: Invalid value: \"-v\""), "{e}");
    }

    #[test]
    fn from_json_wrong_shapes_are_errors_not_panics() {
        for v in [
            json!("app=x"),
            json!(3),
            json!({"matchLabels": []}),
            json!({"matchLabels": {"a": 1}}),
            json!({"matchExpressions": {}}),
            json!({"matchExpressions": [1]}),
            json!({"matchExpressions": [{"key": 1, "operator": "Exists"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}),
            json!({"matchExpressions": [{"key": "a"}]}),
        ] {
            assert!(LabelSelector::from_json(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn label_non_string_label_values_compare_by_string_form() {
        assert!(sel("n=3,b=true").matches(&labels(json!({"n": 3, "b": true}))));
    }

    #[test]
    fn label_parser_never_panics_on_arbitrary_input() {
        let alphabet = [
            'a', '=', '!', '(', ')', ',', ' ', 'é', '>', '<', '/', '-', 'n',
        ];
        let n = alphabet.len();
        let mut count = 0;
        for len in 0..=4u32 {
            for mut idx in 0..n.pow(len) {
                let mut s = String::new();
                for _ in 0..len {
                    s.push(alphabet[idx % n]);
                    idx /= n;
                }
                if let Ok(parsed) = LabelSelector::parse(&s) {
                    // Whatever parses must survive a Display round-trip.
                    assert_eq!(
                        LabelSelector::parse(&parsed.to_string()).as_ref(),
                        Ok(&parsed),
                        "{s:?}"
                    );
                    parsed.matches(&labels(json!({"a": "a", "n": ""})));
                }
                let _ = FieldSelector::parse(&s).map(|f| f.matches(&json!({"a": 1})));
                count += 1;
            }
        }
        assert!(count > 30000);
    }

    // --- field selectors ---

    fn pod(node: Option<&str>, phase: &str) -> Value {
        let mut spec = json!({"containers": []});
        if let (Some(n), Some(obj)) = (node, spec.as_object_mut()) {
            obj.insert("nodeName".into(), json!(n));
        }
        json!({
            "metadata": {"name": "p1", "namespace": "default"},
            "spec": spec,
            "status": {"phase": phase}
        })
    }

    #[test]
    fn field_empty_string_is_empty_and_matches_everything() {
        let f = fsel("");
        assert!(f.is_empty());
        assert!(f.matches(&json!({})));
        assert_eq!(f.pinned_name(), None);
    }

    #[test]
    fn field_selector_on_pods_node_name_and_phase() {
        let f = fsel("spec.nodeName=n1,status.phase!=Succeeded");
        assert!(!f.is_empty());
        assert!(f.matches(&pod(Some("n1"), "Running")));
        assert!(!f.matches(&pod(Some("n1"), "Succeeded")));
        assert!(!f.matches(&pod(Some("n2"), "Running")));
        assert!(!f.matches(&pod(None, "Pending")));
        assert!(f
            .check_supported(&["spec.nodeName", "status.phase"])
            .is_ok());
    }

    #[test]
    fn field_double_equals_is_equality() {
        let f = fsel("status.phase==Running");
        assert!(f.matches(&pod(None, "Running")));
        assert!(!f.matches(&pod(None, "Pending")));
    }

    #[test]
    fn field_missing_field_compares_as_empty_string() {
        assert!(fsel("spec.nodeName=").matches(&pod(None, "Pending")));
        assert!(!fsel("spec.nodeName=").matches(&pod(Some("n1"), "Pending")));
        assert!(fsel("spec.nodeName!=").matches(&pod(Some("n1"), "Pending")));
        assert!(!fsel("spec.nodeName!=").matches(&pod(None, "Pending")));
    }

    #[test]
    fn field_booleans_and_numbers_compare_by_string_form() {
        let node = json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}});
        assert!(fsel("spec.unschedulable=true").matches(&node));
        assert!(!fsel("spec.unschedulable=false").matches(&node));
        let dep = json!({"spec": {"replicas": 3}});
        assert!(fsel("spec.replicas=3").matches(&dep));
    }

    #[test]
    fn field_missing_unschedulable_reads_as_false() {
        let node = json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(fsel("spec.unschedulable=false").matches(&node));
        assert!(fsel("spec.unschedulable!=true").matches(&node));
        assert!(fsel("spec.unschedulable=false").matches(&json!({"metadata": {}})));
    }

    #[test]
    fn field_top_level_and_nested_event_fields() {
        let ev = json!({"type": "Warning", "involvedObject": {"uid": "u-1", "kind": "Pod"}});
        assert!(fsel("type=Warning,involvedObject.uid=u-1").matches(&ev));
        assert!(!fsel("type=Normal").matches(&ev));
        assert!(!fsel("involvedObject.kind=Node").matches(&ev));
    }

    #[test]
    fn field_escaped_comma_stays_in_value() {
        let f = fsel(r"metadata.name=a\,b,metadata.namespace=ns");
        assert_eq!(f.pinned_name(), Some("a,b"));
        assert!(f.matches(&json!({"metadata": {"name": "a,b", "namespace": "ns"}})));
        assert!(!f.matches(&json!({"metadata": {"name": "a", "namespace": "ns"}})));
    }

    #[test]
    fn field_escaped_equals_bang_and_backslash() {
        let f = fsel(r"metadata.name=x\=y\!z\\w");
        assert_eq!(f.pinned_name(), Some(r"x=y!z\w"));
    }

    #[test]
    fn field_invalid_escape_sequence_is_an_error() {
        assert_eq!(
            ferr(r"a=b\x"),
            r"invalid field selector: invalid escape sequence: \x"
        );
        assert_eq!(
            ferr(r"a=b\"),
            r"invalid field selector: invalid escape sequence: \"
        );
    }

    #[test]
    fn field_unescaped_equals_in_value_is_an_error() {
        assert_eq!(
            ferr("a=b=c"),
            "invalid field selector: unescaped character in value: 61"
        );
    }

    #[test]
    fn field_term_without_operator_is_an_error() {
        assert_eq!(
            ferr("a=b,abc"),
            "invalid selector: 'a=b,abc'; can't understand 'abc'"
        );
    }

    #[test]
    fn field_not_equals_with_bang_value_splits_at_first_operator() {
        let f = fsel("a!=!b");
        assert!(f.matches(&json!({"a": "b"})));
        assert!(!f.matches(&json!({"a": "!b"})));
    }

    #[test]
    fn field_empty_terms_are_skipped() {
        let f = fsel(",a=b,,");
        assert!(f.matches(&json!({"a": "b"})));
        assert!(!f.matches(&json!({"a": "c"})));
    }

    #[test]
    fn field_parse_order_does_not_affect_equality() {
        assert_eq!(fsel("b=1,a=2"), fsel("a=2,b=1"));
    }

    #[test]
    fn field_unsupported_field_error_message() {
        let f = fsel("spec.nodeName=n1,spec.bogus=x");
        assert_eq!(
            f.check_supported(&["spec.nodeName"]),
            Err("field label not supported: spec.bogus".to_string())
        );
        // Field names are not trimmed, as in apimachinery.
        assert_eq!(
            fsel("status.phase =x").check_supported(&["status.phase"]),
            Err("field label not supported: status.phase ".to_string())
        );
    }

    #[test]
    fn field_metadata_name_and_namespace_always_supported() {
        let f = fsel("metadata.name=a,metadata.namespace=b");
        assert!(f.check_supported(&[]).is_ok());
    }

    #[test]
    fn field_pinned_name_only_for_equality_on_metadata_name() {
        assert_eq!(fsel("metadata.name=web-0").pinned_name(), Some("web-0"));
        assert_eq!(
            fsel("metadata.name==web-0,status.phase=Running").pinned_name(),
            Some("web-0")
        );
        assert_eq!(fsel("metadata.name!=web-0").pinned_name(), None);
        assert_eq!(fsel("metadata.namespace=default").pinned_name(), None);
        assert_eq!(fsel("metadata.name=").pinned_name(), Some(""));
    }
}
