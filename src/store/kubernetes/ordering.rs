//! Ordered delivery per key: the unfinished deliveries of each (webhook,
//! key value), in the order ingest accepted their events. Only the first of
//! a group may be attempted; the others wait until it finishes. Derived
//! from stored state alone (accept time and event id), so a restarted or
//! new leader rebuilds the same order from its first list.

use crate::resources::delivery::Delivery;
use jiff::Timestamp;
use kube::ResourceExt;
use std::collections::{BTreeSet, HashMap};

/// (namespace, webhook, key value).
pub type Group = (String, String, String);
/// Where a delivery stands in its group: accept time, event id, name.
type Position = (Timestamp, String, String);
type Key = (String, String);

#[derive(Default)]
pub struct Order {
    groups: HashMap<Group, BTreeSet<Position>>,
    members: HashMap<Key, (Group, Position)>,
}

impl Order {
    /// Whether `key` already has its place.
    pub fn contains(&self, key: &Key) -> bool {
        self.members.contains_key(key)
    }

    /// Adds an unfinished delivery to its group (once).
    pub fn enter(&mut self, key: Key, group: Group, delivery: &Delivery) {
        if self.members.contains_key(&key) {
            return;
        }
        let position = (
            delivery.spec.event.received_at.0,
            delivery.spec.event.id.clone(),
            delivery.name_any(),
        );
        self.groups.entry(group.clone()).or_default().insert(position.clone());
        self.members.insert(key, (group, position));
    }

    /// The earlier unfinished delivery `key` must wait for, if any (the
    /// first of its group, when that is not `key` itself).
    pub fn blocker(&self, key: &Key) -> Option<String> {
        let (group, position) = self.members.get(key)?;
        let first = self.groups.get(group)?.first()?;
        (first != position).then(|| first.2.clone())
    }

    /// Removes a finished or deleted delivery; returns the delivery now
    /// first in its group, which may go.
    pub fn leave(&mut self, key: &Key) -> Option<Key> {
        let (group, position) = self.members.remove(key)?;
        let members = self.groups.get_mut(&group)?;
        members.remove(&position);
        let next = members.first().map(|p| (key.0.clone(), p.2.clone()));
        if members.is_empty() {
            self.groups.remove(&group);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::delivery::{DeliverySpec, EventRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn delivery(name: &str, second: i64) -> Delivery {
        Delivery::new(
            name,
            DeliverySpec {
                webhook: "shop".into(),
                hub: "main".into(),
                event: EventRef {
                    id: format!("evt-{name}"),
                    name: "x.y".into(),
                    received_at: MicroTime(Timestamp::from_second(second).unwrap()),
                    trace: None,
                },
                payload: "{}".into(),
            },
        )
    }

    fn key(name: &str) -> Key {
        ("ns".into(), name.into())
    }

    #[test]
    fn later_deliveries_of_a_key_wait_for_the_earliest_and_others_never() {
        let a: Group = ("ns".into(), "shop".into(), "A".into());
        let b: Group = ("ns".into(), "shop".into(), "B".into());
        let mut order = Order::default();
        // Entered out of order (a re-list), ordered by accept time.
        order.enter(key("a2"), a.clone(), &delivery("a2", 20));
        order.enter(key("a1"), a.clone(), &delivery("a1", 10));
        order.enter(key("a3"), a.clone(), &delivery("a3", 30));
        order.enter(key("b1"), b.clone(), &delivery("b1", 15));
        assert_eq!(order.blocker(&key("a1")), None);
        assert_eq!(order.blocker(&key("a2")).as_deref(), Some("a1"));
        assert_eq!(order.blocker(&key("a3")).as_deref(), Some("a1"));
        assert_eq!(order.blocker(&key("b1")), None, "another key never waits");
        assert_eq!(order.leave(&key("a1")), Some(key("a2")), "the next may go");
        assert_eq!(order.blocker(&key("a3")).as_deref(), Some("a2"));
        assert_eq!(order.leave(&key("a2")), Some(key("a3")));
        assert_eq!(order.leave(&key("a3")), None);
        assert_eq!(order.blocker(&key("unknown")), None, "unordered deliveries never wait");
    }
}
