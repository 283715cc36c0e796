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
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease lasts without renewal. Longer than a request timeout.
    pub lease_duration: Duration,
}

impl Settings {
    /// Renewals happen this often.
    pub fn renew_interval(&self) -> Duration {
        self.lease_duration / 4
    }

    /// A holder that could not renew for this long steps down, well before
    /// anyone else may take the lease.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    /// The last lease record seen and when (locally) it was first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
}

/// Whether a lease held by someone else, unchanged since `seen`, has expired.
pub fn expired(seen: Instant, lease_duration: Duration, now: Instant) -> bool {
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

    /// Waits until this process holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "became the leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: could not read or write the lease"),
            }
            tokio::time::sleep(self.settings.renew_interval()).await;
        }
    }

    /// Renews the lease until `stop` is cancelled or a renewal deadline
    /// passes (then cancels `lost`). Call `release` once the work has stopped.
    pub async fn hold(mut self, stop: CancellationToken, lost: CancellationToken) -> Self {
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return self,
                _ = tokio::time::sleep(self.settings.renew_interval()) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    tracing::error!("leader election: the lease was taken by another holder");
                    lost.cancel();
                    return self;
                }
                Err(e) => tracing::warn!(error = %e, "leader election: renewal failed"),
            }
            if last_renewal.elapsed() > self.settings.renew_deadline() {
                tracing::error!("leader election: could not renew the lease in time; stepping down");
                lost.cancel();
                return self;
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
                self.observed = Some((record.0, record.1, Instant::now()));
                Instant::now()
            }
        };
        let mine = holder.as_deref() == Some(me.as_str());
        let held_duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration).max(0) as u64);
        if !mine && holder.is_some() && !expired(seen, held_duration, Instant::now()) {
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
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
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
        let seen = Instant::now();
        let d = Duration::from_secs(15);
        assert!(!expired(seen, d, seen + Duration::from_secs(14)));
        assert!(expired(seen, d, seen + Duration::from_secs(16)));
    }

    #[test]
    fn renewal_happens_well_within_the_deadline() {
        let s = Settings {
            namespace: "n".into(),
            name: "l".into(),
            identity: "i".into(),
            lease_duration: Duration::from_secs(20),
        };
        assert!(s.renew_interval() * 2 < s.renew_deadline());
        assert!(s.renew_deadline() < s.lease_duration);
    }
}
