//! Retention of finished Deliveries: per webhook, the newest `keepPerWebhook`
//! are kept and none older than `maxAge`. The Webhook's `recentDeliveries`
//! summary outlives the Deliveries themselves.

use crate::resources::Hub;
use crate::resources::delivery::Delivery;
use jiff::Timestamp;
use kube::ResourceExt;
use std::collections::HashMap;
use std::time::Duration;

pub const DEFAULT_KEEP_PER_WEBHOOK: usize = 100;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A hub's retention policy with defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub keep: usize,
    pub max_age: Duration,
}

impl Policy {
    pub fn of(hub: Option<&Hub>) -> Self {
        let spec = hub.and_then(|h| h.spec.retention.as_ref());
        Self {
            keep: spec
                .and_then(|r| r.keep_per_webhook)
                .map(|k| k as usize)
                .unwrap_or(DEFAULT_KEEP_PER_WEBHOOK),
            max_age: spec.and_then(|r| r.max_age).map(Into::into).unwrap_or(DEFAULT_MAX_AGE),
        }
    }
}

/// The finished deliveries (name → completion time) that `policy` removes.
pub fn expired(finished: &HashMap<String, Timestamp>, policy: Policy, now: Timestamp) -> Vec<String> {
    let mut newest_first: Vec<(&String, &Timestamp)> = finished.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(a.1).then_with(|| b.0.cmp(a.0)));
    let oldest_kept = now - policy.max_age;
    newest_first
        .into_iter()
        .enumerate()
        .filter(|(i, (_, at))| *i >= policy.keep || **at < oldest_kept)
        .map(|(_, (name, _))| name.clone())
        .collect()
}

/// Finished deliveries per (namespace, webhook), as the engine saw them.
#[derive(Default)]
pub struct Index(HashMap<(String, String), HashMap<String, Timestamp>>);

impl Index {
    pub fn finished(&mut self, delivery: &Delivery) {
        let at = delivery
            .status
            .as_ref()
            .and_then(|s| s.completed_at.as_ref())
            .map(|t| t.0)
            .or_else(|| delivery.creation_timestamp().map(|t| t.0))
            .unwrap_or_else(Timestamp::now);
        self.0
            .entry((delivery.namespace().unwrap_or_default(), delivery.spec.webhook.clone()))
            .or_default()
            .insert(delivery.name_any(), at);
    }

    pub fn forget(&mut self, delivery: &Delivery) {
        let key = (delivery.namespace().unwrap_or_default(), delivery.spec.webhook.clone());
        if let Some(names) = self.0.get_mut(&key) {
            names.remove(&delivery.name_any());
            if names.is_empty() {
                self.0.remove(&key);
            }
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Takes out what the policies remove: (namespace, delivery names).
    pub fn sweep(&mut self, policy_of: impl Fn(&str, &str) -> Policy, now: Timestamp) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for ((ns, webhook), names) in self.0.iter_mut() {
            let gone = expired(names, policy_of(ns, webhook), now);
            for name in &gone {
                names.remove(name);
            }
            if !gone.is_empty() {
                out.push((ns.clone(), gone));
            }
        }
        self.0.retain(|_, names| !names.is_empty());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs_ago: i64, now: Timestamp) -> Timestamp {
        now - jiff::SignedDuration::from_secs(secs_ago)
    }

    #[test]
    fn keeps_the_newest_per_count_and_drops_the_too_old() {
        let now = Timestamp::now();
        let finished: HashMap<String, Timestamp> = (0..5).map(|i| (format!("d{i}"), at(i * 10, now))).collect();
        let mut by_count = expired(
            &finished,
            Policy {
                keep: 2,
                max_age: DEFAULT_MAX_AGE,
            },
            now,
        );
        by_count.sort();
        assert_eq!(by_count, vec!["d2", "d3", "d4"]);
        let mut by_age = expired(
            &finished,
            Policy {
                keep: 100,
                max_age: Duration::from_secs(25),
            },
            now,
        );
        by_age.sort();
        assert_eq!(by_age, vec!["d3", "d4"]);
        assert!(
            expired(
                &finished,
                Policy {
                    keep: 100,
                    max_age: DEFAULT_MAX_AGE
                },
                now
            )
            .is_empty()
        );
    }

    #[test]
    fn defaults_apply_without_a_hub_setting() {
        assert_eq!(
            Policy::of(None),
            Policy {
                keep: DEFAULT_KEEP_PER_WEBHOOK,
                max_age: DEFAULT_MAX_AGE
            }
        );
    }
}
