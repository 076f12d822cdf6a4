//! `kuberaft node` flags and their validation into a [`Shape`]: what every hollow node looks like.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Taint;

#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// Run hollow nodes: registered and heartbeating, reporting their pods as running without
    /// running anything (required for now: the real node daemon comes later)
    #[arg(long)]
    pub hollow: bool,
    /// Kubeconfig for the API server
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: PathBuf,
    /// Node name (default: the hostname); with --hollow-count N > 1 the nodes are NAME-0..NAME-(N-1)
    #[arg(long)]
    pub name: Option<String>,
    /// How many hollow nodes this process runs
    #[arg(long, default_value_t = 1)]
    pub hollow_count: usize,
    /// CPU capacity of each node
    #[arg(long, default_value = "4")]
    pub cpu: String,
    /// Memory capacity of each node
    #[arg(long, default_value = "8Gi")]
    pub memory: String,
    /// Pod capacity of each node
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Extra node labels: k=v,k2=v2
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Spread the nodes over these zones, round robin: node i gets the label
    /// topology.kubernetes.io/zone=ZONES[i mod len] (one process can then stand in for a
    /// multi-zone cluster)
    #[arg(long, value_delimiter = ',')]
    pub zones: Vec<String>,
    /// Node taints: key=value:Effect,... (or key:Effect)
    #[arg(long, value_delimiter = ',')]
    pub taints: Vec<String>,
    /// Seconds between Lease renewals (the node heartbeat)
    #[arg(long, default_value_t = 10)]
    pub heartbeat_seconds: u64,
}

#[derive(clap::Parser)]
#[command(name = "node")]
struct Flags {
    #[command(flatten)]
    args: NodeArgs,
}

impl NodeArgs {
    /// Parses flags as `kuberaft node` would (for tests and embedders), e.g.
    /// `NodeArgs::from_flags(["--hollow", "--kubeconfig", "k", "--hollow-count", "3"])`.
    pub fn from_flags<I, T>(flags: I) -> Result<NodeArgs>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let argv = std::iter::once(std::ffi::OsString::from("node")).chain(flags.into_iter().map(Into::into));
        Ok(Flags::try_parse_from(argv)?.args)
    }
}

/// Labels every hollow node carries; they win over --labels.
pub const HOLLOW_LABEL: (&str, &str) = ("node.kubernetes.io/instance-type", "hollow");

/// The validated flags: node names and what each node reports.
#[derive(Clone, Debug)]
pub struct Shape {
    pub names: Vec<String>,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    /// --labels only; the well-known ones (and the zone) are added per node.
    pub labels: BTreeMap<String, String>,
    /// --zones: node i is in zones[i % len] (none: no zone label beyond --labels).
    pub zones: Vec<String>,
    pub taints: Vec<Taint>,
    pub heartbeat: Duration,
    pub kernel_version: String,
}

impl Shape {
    pub fn from_args(args: &NodeArgs, hostname: impl FnOnce() -> Result<String>) -> Result<Shape> {
        if args.hollow_count == 0 {
            bail!("--hollow-count must be at least 1");
        }
        if args.heartbeat_seconds == 0 {
            bail!("--heartbeat-seconds must be at least 1");
        }
        let base = match &args.name {
            Some(n) => n.clone(),
            None => hostname()?.trim().to_ascii_lowercase(),
        };
        let names: Vec<String> = if args.hollow_count == 1 { vec![base.clone()] } else { (0..args.hollow_count).map(|i| format!("{base}-{i}")).collect() };
        for n in &names {
            if !is_dns1123_subdomain(n) {
                bail!("node name {n:?} is not a valid DNS-1123 subdomain (lower-case alphanumerics, '-' and '.'); set --name");
            }
        }
        let zones: Vec<String> = args.zones.iter().map(|z| z.trim().to_string()).filter(|z| !z.is_empty()).collect();
        for z in &zones {
            check_label_value(z).with_context(|| format!("--zones: {z:?}"))?;
        }
        check_quantity(&args.cpu).context("--cpu")?;
        check_quantity(&args.memory).context("--memory")?;
        Ok(Shape {
            names,
            cpu: args.cpu.clone(),
            memory: args.memory.clone(),
            max_pods: args.max_pods,
            labels: parse_labels(&args.labels)?,
            zones,
            taints: parse_taints(&args.taints)?,
            heartbeat: Duration::from_secs(args.heartbeat_seconds),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into()),
        })
    }
}

/// The machine's host name (the default node name).
pub fn hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| std::env::var("HOSTNAME")).context("cannot find the host name; set --name")?;
    Ok(h.trim().to_string())
}

/// `k=v` entries (empty ones skipped) into a map; keys and values validated as Kubernetes does.
pub fn parse_labels(flags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in flags.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let Some((k, v)) = s.split_once('=') else { bail!("label {s:?}: expected key=value") };
        check_qualified_name(k).with_context(|| format!("label {s:?}"))?;
        check_label_value(v).with_context(|| format!("label {s:?}"))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            bail!("label {s:?}: key {k:?} given twice");
        }
    }
    Ok(out)
}

/// `key=value:Effect` or `key:Effect` entries (kubelet's --register-with-taints format).
pub fn parse_taints(flags: &[String]) -> Result<Vec<Taint>> {
    let mut out: Vec<Taint> = Vec::new();
    for s in flags.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let Some((kv, effect)) = s.rsplit_once(':') else { bail!("taint {s:?}: expected key=value:Effect") };
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            bail!("taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute");
        }
        let (k, v) = kv.split_once('=').map(|(k, v)| (k, Some(v))).unwrap_or((kv, None));
        check_qualified_name(k).with_context(|| format!("taint {s:?}"))?;
        if let Some(v) = v {
            check_label_value(v).with_context(|| format!("taint {s:?}"))?;
        }
        if out.iter().any(|t| t.key == k && t.effect == effect) {
            bail!("taint {s:?}: key {k:?} with effect {effect} given twice");
        }
        out.push(Taint { key: k.to_string(), value: v.filter(|v| !v.is_empty()).map(str::to_string), effect: effect.to_string(), time_added: None });
    }
    Ok(out)
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && l.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && l.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

/// `[prefix/]name`, prefix a DNS subdomain, name up to 63 characters.
fn check_qualified_name(k: &str) -> Result<()> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            bail!("key prefix {p:?} must be a DNS-1123 subdomain");
        }
    }
    if !is_name_part(name) {
        bail!("key name {name:?} must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric");
    }
    Ok(())
}

fn check_label_value(v: &str) -> Result<()> {
    if !v.is_empty() && !is_name_part(v) {
        bail!("value {v:?} must be at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric");
    }
    Ok(())
}

/// A resource quantity as Kubernetes writes them: a decimal number and an optional suffix.
fn check_quantity(q: &str) -> Result<()> {
    let num_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_end);
    let digits = num.trim_start_matches('+');
    let valid_num = !digits.is_empty() && digits.bytes().any(|b| b.is_ascii_digit()) && digits.matches('.').count() <= 1 && !digits.contains('+');
    let valid_suffix = matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
        || (suffix.len() > 1 && (suffix.starts_with('e') || suffix.starts_with('E')) && suffix[1..].trim_start_matches(['+', '-']).parse::<u32>().is_ok());
    if !valid_num || !valid_suffix {
        bail!("{q:?} is not a quantity (e.g. 4, 500m, 8Gi)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn labels_parse_and_reject_bad_input() {
        let l = parse_labels(&strs(&["zone=a", "example.com/tier=", " ", "x.y_z=v-1"])).expect("valid");
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert_eq!(l.get("example.com/tier").map(String::as_str), Some(""));
        assert_eq!(l.len(), 3);
        for bad in ["noequals", "=v", "a=b c", "Bad_Prefix.COM/x=y", "-a=b", "a=-b", "a/b/c=d", &format!("a={}", "x".repeat(64))] {
            assert!(parse_labels(&strs(&[bad])).is_err(), "{bad} should be refused");
        }
        assert!(parse_labels(&strs(&["a=1", "a=2"])).is_err());
    }

    #[test]
    fn taints_parse_and_reject_bad_input() {
        let t = parse_taints(&strs(&["dedicated=gpu:NoSchedule", "spot:PreferNoSchedule", "example.com/x=:NoExecute"])).expect("valid");
        assert_eq!((t[0].key.as_str(), t[0].value.as_deref(), t[0].effect.as_str()), ("dedicated", Some("gpu"), "NoSchedule"));
        assert_eq!((t[1].key.as_str(), t[1].value.as_deref(), t[1].effect.as_str()), ("spot", None, "PreferNoSchedule"));
        assert_eq!((t[2].key.as_str(), t[2].value.as_deref()), ("example.com/x", None));
        for bad in ["a=b", "a=b:Sometimes", ":NoSchedule", "a b:NoSchedule", "a=b c:NoExecute"] {
            assert!(parse_taints(&strs(&[bad])).is_err(), "{bad} should be refused");
        }
        assert!(parse_taints(&strs(&["a=1:NoSchedule", "a=2:NoSchedule"])).is_err());
        assert!(parse_taints(&strs(&["a=1:NoSchedule", "a=2:NoExecute"])).is_ok());
    }

    #[test]
    fn quantities() {
        for ok in ["4", "500m", "8Gi", "1.5", "100Mi", "2e3", "+1"] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Gi", "4 Gi", "4GB", "1.2.3", "four", "-1"] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_from_flags() {
        let a = NodeArgs::from_flags(["--hollow", "--kubeconfig", "k", "--name", "hn", "--hollow-count", "3", "--labels", "a=b,c=d"]).expect("parse");
        assert_eq!(a.labels, strs(&["a=b", "c=d"]));
        assert_eq!((a.cpu.as_str(), a.memory.as_str(), a.max_pods, a.heartbeat_seconds), ("4", "8Gi", 110, 10));
        let s = Shape::from_args(&a, || unreachable!("name given")).expect("shape");
        assert_eq!(s.names, strs(&["hn-0", "hn-1", "hn-2"]));
        let one = NodeArgs::from_flags(["--hollow", "--kubeconfig", "k"]).expect("parse");
        assert_eq!(Shape::from_args(&one, || Ok("My-Host\n".into())).expect("shape").names, strs(&["my-host"]));
        assert!(Shape::from_args(&one, || Ok("under_score".into())).is_err());
        assert!(NodeArgs::from_flags(["--hollow"]).is_err(), "--kubeconfig is required");
        let bad_cpu = NodeArgs::from_flags(["--hollow", "--kubeconfig", "k", "--name", "x", "--cpu", "lots"]).expect("parse");
        assert!(Shape::from_args(&bad_cpu, || unreachable!()).is_err());
    }
}
