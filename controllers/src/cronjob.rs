//! CronJob controller (batch/v1): creates a Job `<cronjob>-<scheduled minute since the epoch>`
//! at each time of a standard 5-field cron schedule in `spec.timeZone`, honouring
//! `concurrencyPolicy`, `startingDeadlineSeconds`, `suspend` and the history limits, and wakes
//! up again at the next scheduled time (no polling).
//!
//! The schedule parser is our own: the cron crates either want a seconds field or accept
//! extensions (L, W, #, years) that upstream's parser (robfig/cron's standard parser) rejects.
//! Semantics follow that parser: `*` and `?` are wildcards, `N/step` means `N-max/step`, names
//! JAN-DEC and SUN-SAT, day-of-week 0-6, the @yearly/@annually/@monthly/@weekly/@daily/
//! @midnight/@hourly descriptors; when both day-of-month and day-of-week are restricted a day
//! matching either runs (OR), otherwise both must match. A schedule time is a wall-clock time
//! in the zone: times skipped by a DST jump do not run, times repeated run at each instant.
//! `@every` and TZ=/CRON_TZ= prefixes are rejected.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jiff::tz::TimeZone;
pub use jiff::Timestamp;
use jiff::ToSpan;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::util::{controller_ref, owner_ref};

const COMPONENT: &str = "cronjob-controller";
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed start times than this since the last schedule: an event, as upstream.
const TOO_MANY_MISSED: u64 = 100;
/// Requeue slightly after the scheduled time, as upstream's nextScheduleDelta.
const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);

/// The controller's notion of time, injectable for tests.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    /// Real time to wait until this clock has advanced by `d`.
    fn real(&self, d: Duration) -> Duration {
        d
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

struct Ctx {
    client: Client,
    clock: Arc<dyn Clock>,
}

pub async fn run(client: Client) -> anyhow::Result<()> {
    run_with_clock(client, Arc::new(SystemClock)).await
}

pub async fn run_with_clock(client: Client, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
    let ctl = Controller::new(Api::<CronJob>::all(client.clone()), watcher::Config::default()).owns(Api::<Job>::all(client.clone()), watcher::Config::default());
    crate::util::drain("cronjob", ctl.run(reconcile, crate::util::error_policy, Arc::new(Ctx { client, clock }))).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Schedule math (pure).

/// A parsed 5-field schedule: one bit per allowed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// The field was `*` or `?`: day matching is then AND instead of OR.
    dom_any: bool,
    dow_any: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

fn value(s: &str, b: &Bounds) -> Result<u32, String> {
    if let Some(i) = b.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(b.min + i as u32);
    }
    s.parse::<u32>().map_err(|_| format!("failed to parse int from {s}"))
}

/// One comma-separated field: bits, and whether it was a bare wildcard.
fn field(expr: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut any = false;
    for part in expr.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s.parse::<u32>().map_err(|_| format!("failed to parse int from {s}"))?)),
            None => (part, None),
        };
        let (mut lo, mut hi, wildcard) = if range == "*" || range == "?" {
            (b.min, b.max, true)
        } else if let Some((l, h)) = range.split_once('-') {
            (value(l, b)?, value(h, b)?, false)
        } else {
            let v = value(range, b)?;
            (v, v, false)
        };
        if step.is_some() && !wildcard && !range.contains('-') {
            // "N/step" means "N-max/step".
            hi = b.max;
        }
        let step = step.unwrap_or(1);
        if step == 0 {
            return Err(format!("step of range should be a positive number: {part}"));
        }
        if lo < b.min {
            return Err(format!("beginning of range ({lo}) below minimum ({}): {part}", b.min));
        }
        if hi > b.max {
            return Err(format!("end of range ({hi}) above maximum ({}): {part}", b.max));
        }
        if lo > hi {
            return Err(format!("beginning of range ({lo}) beyond end of range ({hi}): {part}"));
        }
        any |= wildcard && step == 1;
        while lo <= hi {
            bits |= 1 << lo;
            lo += step;
        }
    }
    Ok((bits, any))
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let expanded = match spec.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {spec}")),
            _ => spec,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {spec}", fields.len()));
        }
        let (minute, _) = field(fields[0], &Bounds { min: 0, max: 59, names: &[] })?;
        let (hour, _) = field(fields[1], &Bounds { min: 0, max: 23, names: &[] })?;
        let (dom, dom_any) = field(fields[2], &Bounds { min: 1, max: 31, names: &[] })?;
        let (month, _) = field(fields[3], &Bounds { min: 1, max: 12, names: &MONTHS })?;
        let (dow, dow_any) = field(fields[4], &Bounds { min: 0, max: 6, names: &DAYS })?;
        Ok(Schedule { minute, hour, dom, month, dow, dom_any, dow_any })
    }
}

impl Schedule {
    fn day_matches(&self, z: &jiff::Zoned) -> bool {
        let dom = self.dom & (1 << z.day()) != 0;
        let dow = self.dow & (1 << z.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_any || self.dow_any { dom && dow } else { dom || dow }
    }

    /// The first schedule time strictly after `after`, within five years.
    pub fn next_after(&self, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
        let mut t = Timestamp::from_second(after.as_second().div_euclid(60) * 60 + 60).ok()?;
        let limit = after.as_second().saturating_add(5 * 366 * 86_400);
        while t.as_second() <= limit {
            let z = t.to_zoned(tz.clone());
            if self.month & (1 << z.month()) == 0 {
                let first = z.date().first_of_month().checked_add(1.month()).ok()?;
                t = first.to_zoned(tz.clone()).ok()?.timestamp();
                continue;
            }
            if !self.day_matches(&z) {
                t = z.date().tomorrow().ok()?.to_zoned(tz.clone()).ok()?.timestamp();
                continue;
            }
            let minute = z.minute() as i64;
            if self.hour & (1 << z.hour()) == 0 {
                t = Timestamp::from_second(t.as_second() + (60 - minute) * 60).ok()?;
                continue;
            }
            if self.minute & (1 << minute) == 0 {
                let next = (minute + 1..60).find(|m| self.minute & (1 << m) != 0).unwrap_or(60);
                t = Timestamp::from_second(t.as_second() + (next - minute) * 60).ok()?;
                continue;
            }
            return Some(t);
        }
        None
    }

    /// The latest schedule time in (`earliest`, `now`] and how many there were.
    pub fn most_recent(&self, tz: &TimeZone, earliest: Timestamp, now: Timestamp) -> (Option<Timestamp>, u64) {
        let mut last = None;
        let mut count = 0u64;
        let mut cursor = earliest;
        while let Some(t) = self.next_after(tz, cursor) {
            if t > now {
                break;
            }
            last = Some(t);
            count += 1;
            cursor = t;
            if count > 100_000 {
                // Years of minutes missed: the latest is within the last day if anything is.
                if let Some(recent) = self.most_recent(tz, now.checked_sub(jiff::SignedDuration::from_hours(24)).unwrap_or(now), now).0 {
                    last = Some(recent);
                }
                break;
            }
        }
        (last, count)
    }
}

/// The Job name for a schedule time: minutes since the epoch, so a replayed time maps to the
/// same name.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// RFC 3339 in the schedule's zone, as Go's time.RFC3339 prints it.
pub fn rfc3339_in(t: Timestamp, tz: &TimeZone) -> String {
    let z = t.to_zoned(tz.clone());
    if z.offset().seconds() == 0 { z.strftime("%Y-%m-%dT%H:%M:%SZ").to_string() } else { z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string() }
}

pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None => Ok(TimeZone::system()),
        Some(n) => TimeZone::get(n).map_err(|e| e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Reconcile.

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Ctx>) -> Result<Action, crate::Error> {
    Ok(sync(&cj, &ctx).await?)
}

fn job_finished(j: &Job) -> Option<&'static str> {
    let st = j.status.as_ref()?;
    ["Complete", "Failed"].into_iter().find(|t| crate::job::condition(st, t).is_some())
}

fn job_ref(j: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: j.metadata.name.clone(),
        namespace: j.metadata.namespace.clone(),
        uid: j.metadata.uid.clone(),
        resource_version: j.metadata.resource_version.clone(),
        ..Default::default()
    }
}

async fn sync(cj: &CronJob, ctx: &Ctx) -> anyhow::Result<Action> {
    let client = &ctx.client;
    let name = cj.name_any();
    let ns = cj.namespace().context("CronJob without namespace")?;
    let uid = cj.metadata.uid.clone().context("CronJob without uid")?;
    let spec = cj.spec.as_ref().context("CronJob without spec")?;
    let jobs_api = Api::<Job>::namespaced(client.clone(), &ns);
    let mut jobs: Vec<Job> = jobs_api.list(&ListParams::default()).await.with_context(|| format!("list jobs in {ns}"))?.items;
    jobs.retain(|j| controller_ref(&j.metadata).is_some_and(|c| c.uid == uid));
    let old = cj.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let mut events: Vec<(&str, &str, String)> = Vec::new();

    // The active list follows the Jobs that exist and have not finished.
    let by_uid: BTreeMap<String, &Job> = jobs.iter().map(|j| (j.metadata.uid.clone().unwrap_or_default(), j)).collect();
    let mut active: Vec<ObjectReference> = Vec::new();
    for a in old.active.iter().flatten() {
        match by_uid.get(a.uid.as_deref().unwrap_or_default()) {
            None => events.push(("Warning", "MissingJob", format!("Active job went missing: {}", a.name.as_deref().unwrap_or_default()))),
            Some(j) => match job_finished(j) {
                Some(cond) => events.push(("Normal", "SawCompletedJob", format!("Saw completed job: {}, condition: {cond}", j.name_any()))),
                None => active.push(job_ref(j)),
            },
        }
    }
    for j in &jobs {
        if job_finished(j).is_none() && !active.iter().any(|a| a.uid == j.metadata.uid) {
            active.push(job_ref(j));
        }
    }
    let last_success = jobs.iter().filter(|j| job_finished(j) == Some("Complete")).filter_map(|j| j.status.as_ref()?.completion_time.clone()).max_by_key(|t| t.0);
    if let Some(t) = last_success {
        if status.last_successful_time.as_ref().is_none_or(|old| old.0 < t.0) {
            status.last_successful_time = Some(t);
        }
    }

    let mut requeue = None;
    if cj.metadata.deletion_timestamp.is_none() {
        requeue = schedule(cj, ctx, &jobs_api, &jobs, &mut active, &mut status, &mut events).await?;
        cleanup_history(spec.successful_jobs_history_limit, "Complete", &jobs, &jobs_api, &mut events).await;
        cleanup_history(spec.failed_jobs_history_limit, "Failed", &jobs, &jobs_api, &mut events).await;
    }

    status.active = if active.is_empty() { None } else { Some(active) };
    let old_names: Vec<_> = old.active.iter().flatten().map(|a| &a.uid).collect();
    let new_names: Vec<_> = status.active.iter().flatten().map(|a| &a.uid).collect();
    if old_names != new_names || status.last_schedule_time != old.last_schedule_time || status.last_successful_time != old.last_successful_time {
        let patch = json!({"status": {"active": status.active, "lastScheduleTime": status.last_schedule_time, "lastSuccessfulTime": status.last_successful_time}});
        Api::<CronJob>::namespaced(client.clone(), &ns).patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await.with_context(|| format!("update status of cronjob {ns}/{name}"))?;
    }
    for (t, reason, msg) in events {
        crate::events::record(client, COMPONENT, cj, t, reason, msg).await;
    }
    Ok(match requeue {
        Some(d) => Action::requeue(ctx.clock.real(d) + NEXT_SCHEDULE_DELTA),
        None => Action::await_change(),
    })
}

/// Starts the Job for the latest missed schedule time if it is due; returns how long until the
/// next schedule time (None: do not wake up by time).
async fn schedule(cj: &CronJob, ctx: &Ctx, jobs_api: &Api<Job>, jobs: &[Job], active: &mut Vec<ObjectReference>, status: &mut CronJobStatus, events: &mut Vec<(&str, &str, String)>) -> anyhow::Result<Option<Duration>> {
    let spec = cj.spec.as_ref().context("CronJob without spec")?;
    let tz = match time_zone(spec.time_zone.as_deref()) {
        Ok(tz) => tz,
        Err(e) => {
            events.push(("Warning", "UnknownTimeZone", format!("invalid timeZone: {:?}: {e}", spec.time_zone.as_deref().unwrap_or_default())));
            return Ok(None);
        }
    };
    if spec.suspend == Some(true) {
        return Ok(None);
    }
    let sched: Schedule = match spec.schedule.parse() {
        Ok(s) => s,
        Err(e) => {
            events.push(("Warning", "UnparseableSchedule", format!("unparseable schedule: {:?} : {e}", spec.schedule)));
            return Ok(None);
        }
    };
    let now = ctx.clock.now();
    let until_next = sched.next_after(&tz, now).map(|t| Duration::from_secs((t.as_second() - now.as_second()).max(0) as u64));
    let created = cj.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
    let mut earliest = status.last_schedule_time.as_ref().map(|t| t.0).unwrap_or(created);
    if let Some(sds) = spec.starting_deadline_seconds {
        let deadline = Timestamp::from_second(now.as_second().saturating_sub(sds)).unwrap_or(earliest);
        earliest = earliest.max(deadline);
    }
    let (scheduled, missed) = sched.most_recent(&tz, earliest, now);
    if missed > TOO_MANY_MISSED {
        events.push(("Warning", "TooManyMissedTimes", format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew")));
    }
    let Some(scheduled) = scheduled else { return Ok(until_next) };
    if let Some(sds) = spec.starting_deadline_seconds {
        if scheduled.as_second().saturating_add(sds) < now.as_second() {
            events.push(("Warning", "MissSchedule", format!("Missed scheduled time to start a job: {}", scheduled.strftime("%a, %d %b %Y %H:%M:%S %z"))));
            return Ok(until_next);
        }
    }
    let jname = job_name(&cj.name_any(), scheduled);
    if jobs.iter().any(|j| j.metadata.name.as_deref() == Some(jname.as_str())) {
        // Already started (a replayed or repeated sync): nothing to do for this time.
        return Ok(until_next);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            events.push(("Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid".into()));
            return Ok(until_next);
        }
        Some("Replace") => {
            for a in std::mem::take(active) {
                let aname = a.name.clone().unwrap_or_default();
                let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
                match jobs_api.delete(&aname, &dp).await {
                    Ok(_) => events.push(("Normal", "SuccessfulDelete", format!("Deleted job {aname}"))),
                    Err(e) if crate::util::is_not_found(&e) => {}
                    Err(e) => {
                        active.push(a);
                        return Err(e).context(format!("delete job {aname}"));
                    }
                }
            }
        }
        _ => {}
    }
    let job = job_from_template(cj, &jname, scheduled, &tz)?;
    match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            events.push(("Normal", "SuccessfulCreate", format!("Created job {jname}")));
            active.push(job_ref(&j));
        }
        Err(e) if crate::util::is_status(&e, 409) && !e.to_string().contains("fenced") => {
            // Created before (our list was older than that write), or someone else's Job.
            let existing = jobs_api.get(&jname).await?;
            if controller_ref(&existing.metadata).is_none_or(|c| Some(&c.uid) != cj.metadata.uid.as_ref()) {
                events.push(("Warning", "FailedCreate", format!("Error creating job: jobs.batch {jname:?} already exists")));
                return Ok(until_next);
            }
            if job_finished(&existing).is_none() && !active.iter().any(|a| a.uid == existing.metadata.uid) {
                active.push(job_ref(&existing));
            }
        }
        Err(e) => {
            events.push(("Warning", "FailedCreate", format!("Error creating job: {e}")));
            return Err(e).context(format!("create job {jname}"));
        }
    }
    status.last_schedule_time = Some(Time(scheduled));
    Ok(until_next)
}

pub fn job_from_template(cj: &CronJob, name: &str, scheduled: Timestamp, tz: &TimeZone) -> anyhow::Result<Job> {
    let tmpl = cj.spec.as_ref().map(|s| s.job_template.clone()).context("CronJob without spec")?;
    let tm = tmpl.metadata.unwrap_or_default();
    let mut annotations = tm.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), rfc3339_in(scheduled, tz));
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: cj.namespace(),
            labels: tm.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![owner_ref(cj).context("CronJob without name or uid")?]),
            ..Default::default()
        },
        spec: tmpl.spec,
        status: None,
    })
}

/// Deletes the oldest finished Jobs (by start time) beyond `limit`.
async fn cleanup_history(limit: Option<i32>, kind: &str, jobs: &[Job], api: &Api<Job>, events: &mut Vec<(&str, &str, String)>) {
    let Some(limit) = limit else { return };
    let mut done: Vec<&Job> = jobs.iter().filter(|j| job_finished(j) == Some(kind) && j.metadata.deletion_timestamp.is_none()).collect();
    let limit = limit.max(0) as usize;
    if done.len() <= limit {
        return;
    }
    let start = |j: &Job| j.status.as_ref().and_then(|s| s.start_time.as_ref()).or(j.metadata.creation_timestamp.as_ref()).map(|t| t.0);
    done.sort_by_key(|j| (start(j), j.name_any()));
    for j in &done[..done.len() - limit] {
        let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match api.delete(&j.name_any(), &dp).await {
            Ok(_) => events.push(("Normal", "SuccessfulDelete", format!("Deleted job {}", j.name_any()))),
            Err(e) if crate::util::is_not_found(&e) => {}
            Err(e) => tracing::warn!(job = %j.name_any(), error = %e, "deleting old job failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, tz: &str, after: &str) -> String {
        let tz = TimeZone::get(tz).unwrap();
        let s: Schedule = spec.parse().unwrap();
        s.next_after(&tz, utc(after)).map(|t| rfc3339_in(t, &tz)).unwrap_or_default()
    }

    #[test]
    fn parses_lists_ranges_steps_and_names() {
        let s: Schedule = "0,30 9-17/2 * JAN-mar mon-FRI".parse().unwrap();
        assert_eq!(s.minute, 1 | 1 << 30);
        assert_eq!(s.hour, 1 << 9 | 1 << 11 | 1 << 13 | 1 << 15 | 1 << 17);
        assert_eq!(s.month, 0b1110);
        assert_eq!(s.dow, 0b111110);
        assert!(s.dom_any && !s.dow_any);
        // "N/step" runs from N to the maximum.
        let s: Schedule = "5/20 * * * *".parse().unwrap();
        assert_eq!(s.minute, 1 << 5 | 1 << 25 | 1 << 45);
        assert_eq!("@daily".parse::<Schedule>(), "0 0 * * *".parse());
        assert_eq!("@yearly".parse::<Schedule>(), "0 0 1 1 *".parse());
        assert_eq!("@hourly".parse::<Schedule>(), "0 * * * *".parse());
    }

    #[test]
    fn rejects_what_the_standard_parser_rejects() {
        for bad in ["", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 7", "*/0 * * * *", "5-1 * * * *", "x * * * *", "@every 5m", "@reboot", "TZ=UTC * * * * *", "CRON_TZ=UTC 0 * * * *", "* * * FOO *", "1-2-3 * * * *"] {
            assert!(bad.parse::<Schedule>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn next_times_at_fixed_instants() {
        assert_eq!(next("*/15 * * * *", "UTC", "2024-05-01T10:07:30Z"), "2024-05-01T10:15:00Z");
        assert_eq!(next("* * * * *", "UTC", "2024-05-01T10:07:00Z"), "2024-05-01T10:08:00Z");
        assert_eq!(next("0 0 * * *", "UTC", "2024-12-31T23:59:59Z"), "2025-01-01T00:00:00Z");
        assert_eq!(next("30 4 29 2 *", "UTC", "2025-01-01T00:00:00Z"), "2028-02-29T04:30:00Z");
        assert_eq!(next("0 12 * * SUN", "UTC", "2024-05-01T00:00:00Z"), "2024-05-05T12:00:00Z");
        // In a zone: 09:00 in Tokyo is 00:00 UTC.
        assert_eq!(next("0 9 * * *", "Asia/Tokyo", "2024-05-01T00:30:00Z"), "2024-05-02T09:00:00+09:00");
        // February 30th never comes.
        let s: Schedule = "0 0 30 2 *".parse().unwrap();
        assert_eq!(s.next_after(&TimeZone::UTC, utc("2024-01-01T00:00:00Z")), None);
    }

    #[test]
    fn day_of_month_and_day_of_week_are_ored_when_both_are_restricted() {
        // The 13th or any Friday: from Mon 2024-09-02, Friday the 6th comes first, then the 13th.
        assert_eq!(next("0 0 13 * FRI", "UTC", "2024-09-02T00:00:00Z"), "2024-09-06T00:00:00Z");
        assert_eq!(next("0 0 13 * 5", "UTC", "2024-09-10T00:00:00Z"), "2024-09-13T00:00:00Z");
        assert_eq!(next("0 0 12 * 5", "UTC", "2024-09-10T00:00:00Z"), "2024-09-12T00:00:00Z");
        // A wildcard in either field makes it AND: the 13th only if it is a Friday.
        assert_eq!(next("0 0 13 * *", "UTC", "2024-09-02T00:00:00Z"), "2024-09-13T00:00:00Z");
        assert_eq!(next("0 0 * * FRI", "UTC", "2024-09-02T00:00:00Z"), "2024-09-06T00:00:00Z");
        // "*/2" is a restriction, not a wildcard (robfig clears the star bit for steps > 1).
        assert_eq!(next("0 0 */2 * MON", "UTC", "2024-09-02T12:00:00Z"), "2024-09-03T00:00:00Z");
    }

    #[test]
    fn daylight_saving_time_in_a_zone() {
        // New York springs forward at 02:00 on 2024-03-10: 02:30 does not exist that day.
        assert_eq!(next("30 2 * * *", "America/New_York", "2024-03-09T12:00:00Z"), "2024-03-11T02:30:00-04:00");
        assert_eq!(next("30 1 * * *", "America/New_York", "2024-03-09T12:00:00Z"), "2024-03-10T01:30:00-05:00");
        assert_eq!(next("30 3 * * *", "America/New_York", "2024-03-10T06:00:00Z"), "2024-03-10T03:30:00-04:00");
        // It falls back at 02:00 on 2024-11-03: 01:30 happens twice, and runs twice.
        let first = next("30 1 * * *", "America/New_York", "2024-11-03T04:00:00Z");
        assert_eq!(first, "2024-11-03T01:30:00-04:00");
        assert_eq!(next("30 1 * * *", "America/New_York", "2024-11-03T05:30:00Z"), "2024-11-03T01:30:00-05:00");
        // A daily 09:00 stays at 09:00 local across the change (13:00 then 14:00 UTC).
        assert_eq!(next("0 9 * * *", "Europe/Berlin", "2024-03-30T09:00:00Z"), "2024-03-31T09:00:00+02:00");
    }

    #[test]
    fn most_recent_counts_missed_times() {
        let s: Schedule = "*/10 * * * *".parse().unwrap();
        let (t, n) = s.most_recent(&TimeZone::UTC, utc("2024-05-01T10:00:00Z"), utc("2024-05-01T10:35:00Z"));
        assert_eq!((t, n), (Some(utc("2024-05-01T10:30:00Z")), 3));
        let (t, n) = s.most_recent(&TimeZone::UTC, utc("2024-05-01T10:00:00Z"), utc("2024-05-01T10:05:00Z"));
        assert_eq!((t, n), (None, 0));
        let every: Schedule = "* * * * *".parse().unwrap();
        let (t, n) = every.most_recent(&TimeZone::UTC, utc("2024-05-01T00:00:00Z"), utc("2024-05-01T02:00:30Z"));
        assert_eq!((t, n), (Some(utc("2024-05-01T02:00:00Z")), 120));
    }

    #[test]
    fn job_names_are_minutes_since_the_epoch() {
        assert_eq!(job_name("hello", utc("2024-05-01T10:30:00Z")), "hello-28575990");
        assert_eq!(rfc3339_in(utc("2024-05-01T10:30:00Z"), &TimeZone::get("Europe/Berlin").unwrap()), "2024-05-01T12:30:00+02:00");
    }
}
