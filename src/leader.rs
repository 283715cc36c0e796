//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go does
//! it: only the holder reconciles and delivers. Expiry is judged on this
//! process's monotonic clock from when the holder's last renewal was
//! observed, so clock skew between nodes does not matter. Writes use the
//! Lease's resourceVersion, so two candidates never both win.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease lasts without renewal: a follower takes over at the
    /// latest this long (plus one retry period) after the leader stopped.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops delivering, well
    /// before a follower may take the lease. Shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and a follower tries to take the lease.
    pub retry_period: Duration,
}

impl Settings {
    /// client-go's proportions (15 s / 10 s / 2 s) for a given lease duration.
    pub fn for_lease(namespace: String, name: String, identity: String, lease_duration: Duration) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: lease_duration * 2 / 15,
        }
    }

    /// Why these settings cannot keep a single leader, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err("--retry-period must be above zero and shorter than --renew-deadline".into());
        }
        if self.renew_deadline >= self.lease_duration {
            return Err("--renew-deadline must be shorter than --lease-duration".into());
        }
        Ok(())
    }
}

/// Whether this process may act as the leader, shared by everything that
/// acts only as the leader. `may_act` is checked right before each request
/// to a handler: it is false as soon as the renew deadline has passed, even
/// before the renewing task has noticed (e.g. after a SIGSTOP).
#[derive(Clone)]
pub struct Leadership {
    /// Until when the last successful renewal lets this process lead;
    /// `None`: without leader election, always.
    valid_until: Option<Arc<Mutex<Instant>>>,
    lost: CancellationToken,
}

impl Leadership {
    /// For a single replica without leader election.
    pub fn unconditional() -> Self {
        Self {
            valid_until: None,
            lost: CancellationToken::new(),
        }
    }

    pub(crate) fn until(valid_until: Instant) -> Self {
        Self {
            valid_until: Some(Arc::new(Mutex::new(valid_until))),
            lost: CancellationToken::new(),
        }
    }

    pub(crate) fn extend(&self, valid_until: Instant) {
        if let Some(v) = &self.valid_until {
            *v.lock().unwrap_or_else(|e| e.into_inner()) = valid_until;
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.valid_until
            .as_ref()
            .map(|v| *v.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// True while the lease is provably held.
    pub fn may_act(&self) -> bool {
        !self.lost.is_cancelled() && self.deadline().is_none_or(|d| Instant::now() < d)
    }

    /// Resolves once leadership is lost (never without leader election).
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    pub(crate) fn lose(&self) {
        self.lost.cancel();
    }
}

pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    /// The last lease record seen and when (locally) it was first seen.
    observed: Option<(Option<String>, Option<MicroTime>, std::time::Instant)>,
}

/// Whether a lease held by someone else, unchanged since `seen`, has expired.
pub fn expired(seen: std::time::Instant, lease_duration: Duration, now: std::time::Instant) -> bool {
    now.duration_since(seen) > lease_duration
}

impl Elector {
    pub fn new(client: Client, settings: Settings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    /// One bounded try: a stalled API server counts as a failed try.
    async fn attempt(&mut self, limit: Duration) -> Result<bool, String> {
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Waits until this process holds the lease; the `Leadership` it returns
    /// is valid until the renew deadline, counted from the start of the
    /// request that took the lease.
    pub async fn acquire(&mut self) -> Leadership {
        loop {
            let started = Instant::now();
            match self.attempt(self.settings.retry_period).await {
                Ok(true) => {
                    tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "became the leader");
                    return Leadership::until(started + self.settings.renew_deadline);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: could not read or write the lease"),
            }
            tokio::time::sleep_until(started + self.settings.retry_period).await;
        }
    }

    /// Renews the lease every retry period until `stop` is cancelled, or
    /// until the renew deadline passes without a renewal or another holder
    /// shows up: then `leadership` is lost at once, whatever a renewal in
    /// progress is doing. Call `release` once the work has stopped.
    pub async fn hold(mut self, leadership: Leadership, stop: CancellationToken) -> Self {
        let Some(mut deadline) = leadership.deadline() else {
            return self;
        };
        let mut next = Instant::now() + self.settings.retry_period;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return self,
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::error!("leader election: could not renew the lease in time; stepping down");
                    leadership.lose();
                    return self;
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            next = started + self.settings.retry_period;
            // Never wait for a renewal past the deadline.
            let limit = deadline.saturating_duration_since(started);
            let renewal = tokio::select! {
                _ = stop.cancelled() => return self,
                r = self.attempt(limit) => r,
            };
            match renewal {
                Ok(true) => {
                    deadline = started + self.settings.renew_deadline;
                    leadership.extend(deadline);
                }
                Ok(false) => {
                    tracing::error!("leader election: the lease was taken by another holder");
                    leadership.lose();
                    return self;
                }
                Err(e) => tracing::warn!(error = %e, "leader election: renewal failed"),
            }
        }
    }

    /// Takes the lease if it is free, expired or ours; renews it if ours.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let me = self.settings.identity.clone();
        let duration = self.settings.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (holder.clone(), spec.renew_time.clone());
        let seen = match &self.observed {
            Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
            _ => {
                let now = std::time::Instant::now();
                self.observed = Some((record.0, record.1, now));
                now
            }
        };
        let mine = holder.as_deref() == Some(me.as_str());
        let held_duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration).max(0) as u64);
        if !mine && holder.is_some() && !expired(seen, held_duration, std::time::Instant::now()) {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me);
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now);
        // The resourceVersion read above makes this fail if anyone wrote meanwhile.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so another replica can take over at once.
    pub async fn release(&mut self) {
        let read = tokio::time::timeout(self.settings.retry_period, self.api.get_opt(&self.settings.name)).await;
        let Ok(Ok(Some(mut lease))) = read else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_only_after_its_duration_on_the_local_clock() {
        let seen = std::time::Instant::now();
        let d = Duration::from_secs(15);
        assert!(!expired(seen, d, seen + Duration::from_secs(14)));
        assert!(expired(seen, d, seen + Duration::from_secs(16)));
    }

    #[test]
    fn defaults_follow_client_go_and_renew_well_within_the_deadline() {
        let s = Settings::for_lease("n".into(), "l".into(), "i".into(), Duration::from_secs(15));
        assert_eq!(s.renew_deadline, Duration::from_secs(10));
        assert_eq!(s.retry_period, Duration::from_secs(2));
        assert!(s.retry_period * 2 < s.renew_deadline);
        assert!(s.check().is_ok());
        let bad = Settings {
            renew_deadline: Duration::from_secs(15),
            ..s.clone()
        };
        assert!(bad.check().unwrap_err().contains("--renew-deadline"));
        let bad = Settings {
            retry_period: Duration::from_secs(10),
            ..s
        };
        assert!(bad.check().unwrap_err().contains("--retry-period"));
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_ends_at_its_deadline_even_before_anyone_notices() {
        let leadership = Leadership::until(Instant::now() + Duration::from_secs(10));
        assert!(leadership.may_act());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(leadership.may_act());
        leadership.extend(Instant::now() + Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(leadership.may_act(), "a renewal extends it");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!leadership.may_act(), "past the deadline, without a renewal");
        assert!(!leadership.is_lost(), "nobody has said so yet; may_act knows anyway");
        assert!(Leadership::unconditional().may_act());
    }
}
