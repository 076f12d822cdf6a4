//! Leader election over a coordination.k8s.io/v1 Lease, with client-go's leaderelection
//! semantics, plus kuberaft's fencing: the leader's client carries `X-Kuberaft-Fence`, so that
//! once the Lease changes hands the API server refuses the old leader's writes (409 "fenced").

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

use crate::client::Access;
use tokio::sync::watch;
use tokio::time::Instant;

/// The request header the API server fences writes by.
pub const FENCE_HEADER: &str = "x-kuberaft-fence";

#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long a renewal may take before the leader says so (it keeps leading until another
    /// holder shows up; see `run_elected`).
    pub renew_deadline: Duration,
    /// Between acquire/renew attempts.
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        ElectionConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The value of the fence header for this holder in the term that began at `epoch` (the
    /// Lease's leaseTransitions then): `NAMESPACE/LEASE=HOLDER@EPOCH`.
    pub fn fence(&self, epoch: i64) -> String {
        format!("{}/{}={}@{epoch}", self.namespace, self.name, self.identity)
    }
}

/// The response header with which the API server marks a write refused by its fence.
pub const FENCED_HEADER: &str = "x-kuberaft-fenced";

/// A kube::Client whose every request carries the fence of `election`'s holder for the term
/// that began at `epoch`; `fenced` turns true as soon as the API server refuses one of its
/// writes by that fence (another holder has the Lease, so the term is over).
pub fn fenced_client(access: &Access, election: &ElectionConfig, epoch: i64, fenced: watch::Sender<bool>) -> anyhow::Result<Client> {
    let fence = election.fence(epoch);
    let value = http::HeaderValue::from_str(&fence).with_context(|| format!("fence {fence:?} is not a valid header value"))?;
    access
        .client_with(vec![(http::HeaderName::from_static(FENCE_HEADER), value)], move |headers| {
            if headers.contains_key(FENCED_HEADER) {
                fenced.send_replace(true);
            }
        })
        .context("building the fenced client")
}

/// Aborts a spawned task when dropped, so that aborting `run_elected` also stops `lead`.
struct AbortOnDrop(tokio::task::JoinHandle<anyhow::Result<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs forever: campaigns for the lease; while this process holds it, runs
/// `lead(fenced_client, lost)`, with a client fenced on this term. `lost` turns true when a
/// renewal finds another holder, or finds that another holder had the Lease in between (we took
/// it back), or when the API server refuses a write of the term by its fence; `lead` then gets
/// one retry period to stop before it is aborted. When `lead` returns or leadership is lost, it
/// campaigns again.
pub async fn run_elected<F, Fut>(access: impl Into<Access>, election: ElectionConfig, lead: F) -> anyhow::Result<()>
where
    F: Fn(kube::Client, watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let access: Access = access.into();
    let plain = access.client().context("building the election client")?;
    let leases: Api<Lease> = Api::namespaced(plain, &election.namespace);
    let lock = format!("{}/{}", election.namespace, election.name);
    loop {
        // Campaign.
        let epoch = loop {
            match try_acquire_or_renew(&leases, &election).await {
                Ok(Held::Acquired(epoch) | Held::Renewed(epoch)) => break epoch,
                Ok(Held::No) => {}
                Err(e) => tracing::debug!(lease = %lock, error = %format!("{e:#}"), "acquiring the lease failed"),
            }
            tokio::time::sleep(jittered(election.retry_period)).await;
        };
        tracing::info!(lease = %lock, identity = %election.identity, epoch, "became leader");
        let (fenced_tx, mut fenced_rx) = watch::channel(false);
        let fenced = fenced_client(&access, &election, epoch, fenced_tx)?;
        let (lost_tx, lost_rx) = watch::channel(false);
        let mut task = AbortOnDrop(tokio::spawn(lead(fenced, lost_rx)));
        // Fires when a write of this term was refused by its fence (never if the term's
        // clients are all dropped without that).
        let fenced_out = async {
            let closed = fenced_rx.wait_for(|f| *f).await.is_err();
            if closed {
                std::future::pending::<()>().await;
            }
        };
        let mut fenced_out = std::pin::pin!(fenced_out);
        let mut last_renew = Instant::now();
        let mut overdue = false;
        // Renew every retry period. Unlike client-go, missing the renew deadline does not end
        // the term by itself: every write of the term is fenced on the Lease, so once another
        // replica takes the Lease over nothing more of ours commits, and the next renewal (or a
        // fenced write) sees that and stops the work. Ending the term on a timeout alone made
        // an overloaded replica drop and re-win its own Lease again and again, relisting
        // everything each time (seen at 5,000 nodes).
        let lost = loop {
            tokio::select! {
                res = &mut task.0 => {
                    match res {
                        Ok(Ok(())) => tracing::info!(lease = %lock, "leader work returned"),
                        Ok(Err(e)) => tracing::warn!(lease = %lock, error = %format!("{e:#}"), "leader work failed"),
                        Err(e) => tracing::warn!(lease = %lock, error = %e, "leader work panicked"),
                    }
                    break false;
                }
                _ = &mut fenced_out => {
                    tracing::warn!(lease = %lock, identity = %election.identity, epoch, "a write of this term was refused by its fence: another holder has the Lease");
                    break true;
                }
                _ = tokio::time::sleep(election.retry_period) => {
                    // Past the deadline, each attempt still gets a whole renew deadline.
                    let left = if overdue { election.renew_deadline } else { election.renew_deadline.saturating_sub(last_renew.elapsed()) };
                    match tokio::time::timeout(left.max(Duration::from_millis(1)), try_acquire_or_renew(&leases, &election)).await {
                        // We took the Lease back from another holder: it led in between, so
                        // this term (its in-memory state, its queued writes) is over; a new
                        // term starts from a fresh campaign.
                        Ok(Ok(Held::Acquired(_))) => break true,
                        Ok(Ok(Held::Renewed(_))) => {
                            if overdue {
                                tracing::info!(lease = %lock, late_ms = last_renew.elapsed().as_millis() as u64, "lease renewed again; still the leader");
                                overdue = false;
                            }
                            last_renew = Instant::now();
                        }
                        Ok(Ok(Held::No)) => {
                            // Someone else holds a valid lease: we are no longer the leader.
                            break true;
                        }
                        Ok(Err(e)) => tracing::debug!(lease = %lock, error = %format!("{e:#}"), "renewing the lease failed"),
                        Err(_) => tracing::debug!(lease = %lock, "renewing the lease timed out"),
                    }
                    if !overdue && last_renew.elapsed() >= election.renew_deadline {
                        overdue = true;
                        tracing::warn!(lease = %lock, identity = %election.identity, "lease not renewed within the renew deadline; another replica may take over, which fences this term's writes");
                    }
                }
            }
        };
        if lost {
            tracing::warn!(lease = %lock, identity = %election.identity, "leadership lost");
            let _ = lost_tx.send(true);
            if tokio::time::timeout(election.retry_period, &mut task.0).await.is_err() {
                task.0.abort();
            }
        } else {
            // `lead` returned: back off a little so a failing `lead` does not spin.
            tokio::time::sleep(election.retry_period).await;
        }
        drop(task);
    }
}

/// ±10 % so that candidates do not retry in lock step.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2 - 0.1)
}

fn now_micro() -> MicroTime {
    // MicroTime serializes with 6 fractional digits; drop the nanoseconds it cannot carry.
    let now = Timestamp::now();
    let micros = now.as_microsecond();
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(now))
}

/// Whether a lease is held by someone (non-empty holder) and not yet expired.
fn held_and_valid(spec: &LeaseSpec, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return false;
    }
    let (Some(renew), Some(secs)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds) else {
        return false;
    };
    let expiry = renew.0.as_millisecond().saturating_add(i64::from(secs) * 1000);
    expiry >= now.as_millisecond()
}

/// What one round of tryAcquireOrRenew found.
#[derive(Debug, PartialEq, Eq)]
enum Held {
    /// We renewed a Lease we already held (its leaseTransitions).
    Renewed(i64),
    /// We took the Lease: it was new, free, expired, or another holder's and expired (its
    /// leaseTransitions, counting this change of holder).
    Acquired(i64),
    /// Someone else holds it, or we lost a write race (409).
    No,
}

/// One round of client-go's tryAcquireOrRenew.
async fn try_acquire_or_renew(leases: &Api<Lease>, e: &ElectionConfig) -> anyhow::Result<Held> {
    let now = now_micro();
    let duration_secs = i32::try_from(e.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let current = leases.get_opt(&e.name).await.with_context(|| format!("reading lease {}/{}", e.namespace, e.name))?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta { name: Some(e.name.clone()), namespace: Some(e.namespace.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(e.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Held::Acquired(0)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Held::No),
            Err(err) => Err(err).with_context(|| format!("creating lease {}/{}", e.namespace, e.name)),
        };
    };
    let mut spec = lease.spec.take().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(e.identity.as_str());
    if !ours && held_and_valid(&spec, now.0) {
        return Ok(Held::No);
    }
    if !ours {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.holder_identity = Some(e.identity.clone());
    }
    spec.lease_duration_seconds = Some(duration_secs);
    spec.renew_time = Some(now);
    let epoch = i64::from(*spec.lease_transitions.get_or_insert(0));
    lease.spec = Some(spec);
    // `lease` keeps the resourceVersion we read: the replace is conditional on it.
    match leases.replace(&e.name, &PostParams::default(), &lease).await {
        Ok(_) if ours => Ok(Held::Renewed(epoch)),
        Ok(_) => Ok(Held::Acquired(epoch)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Held::No),
        Err(err) => Err(err).with_context(|| format!("updating lease {}/{}", e.namespace, e.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renew_ms_ago: i64, secs: i32) -> LeaseSpec {
        let renew = Timestamp::from_millisecond(Timestamp::now().as_millisecond() - renew_ms_ago).ok().map(MicroTime);
        LeaseSpec { holder_identity: Some(holder.into()), renew_time: renew, lease_duration_seconds: Some(secs), ..Default::default() }
    }

    #[test]
    fn lease_is_valid_until_renew_time_plus_duration() {
        assert!(held_and_valid(&spec("a", 1_000, 15), Timestamp::now()));
        assert!(!held_and_valid(&spec("a", 16_000, 15), Timestamp::now()));
    }

    #[test]
    fn lease_without_holder_is_free() {
        assert!(!held_and_valid(&spec("", 0, 15), Timestamp::now()));
        assert!(!held_and_valid(&LeaseSpec::default(), Timestamp::now()));
    }

    #[test]
    fn micro_time_has_six_fractional_digits() {
        let v = serde_json::to_value(now_micro()).unwrap_or_default();
        let s = v.as_str().unwrap_or_default();
        let frac = s.split('.').nth(1).unwrap_or_default();
        assert_eq!(frac.len(), 7, "{s}"); // 6 digits and Z
    }

    #[test]
    fn fence_header_value_names_namespace_lease_holder_and_epoch() {
        assert_eq!(ElectionConfig::new("kube-system", "sched", "n1").fence(3), "kube-system/sched=n1@3");
    }
}
