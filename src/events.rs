//! The catalogue of CMS event names and how webhook subscriptions match them.

/// Events the CMS emits: the seed's list plus `content-item.assigned`.
pub const BUILTIN_EVENTS: &[&str] = &[
    "dynamic-content.edition.scheduled",
    "dynamic-content.edition.unscheduled",
    "dynamic-content.edition.published",
    "dynamic-content.content-item.created",
    "dynamic-content.content-item.updated",
    "dynamic-content.content-item.assigned",
    "dynamic-content.content-item.workflow.updated",
    "dynamic-content.snapshot.published",
];

/// hookrelay's own events, emitted into a hub when a webhook is
/// deactivated or a delivery finally fails, for webhooks subscribed to
/// them (or to `hookrelay.*`). Never accepted from a sender.
pub const WEBHOOK_DEACTIVATED: &str = "hookrelay.webhook.deactivated";
pub const DELIVERY_FAILED: &str = "hookrelay.delivery.failed";
pub const OPERATIONAL_EVENTS: &[&str] = &[WEBHOOK_DEACTIVATED, DELIVERY_FAILED];

/// Whether `event` is one of hookrelay's own (reserved) names.
pub fn is_operational(event: &str) -> bool {
    event.starts_with("hookrelay.")
}

/// A built-in event as people see it: the seed's group, label and words.
pub struct EventInfo {
    pub name: &'static str,
    pub group: &'static str,
    pub label: &'static str,
    pub description: &'static str,
}

/// The built-in events in the order and groups the CMS lists them.
pub const CATALOGUE: &[EventInfo] = &[
    EventInfo {
        name: "dynamic-content.edition.scheduled",
        group: "Edition",
        label: "scheduled",
        description: "an edition is scheduled",
    },
    EventInfo {
        name: "dynamic-content.edition.unscheduled",
        group: "Edition",
        label: "unscheduled",
        description: "an edition is unscheduled",
    },
    EventInfo {
        name: "dynamic-content.edition.published",
        group: "Edition",
        label: "published",
        description: "a scheduled edition is published (on its start date)",
    },
    EventInfo {
        name: "dynamic-content.content-item.created",
        group: "Content item",
        label: "created",
        description: "a new content item is created in the production view",
    },
    EventInfo {
        name: "dynamic-content.content-item.updated",
        group: "Content item",
        label: "updated",
        description: "a content item is updated (any change)",
    },
    EventInfo {
        name: "dynamic-content.content-item.assigned",
        group: "Content item",
        label: "assigned",
        description: "a content item is assigned to a user",
    },
    EventInfo {
        name: "dynamic-content.snapshot.published",
        group: "Snapshot",
        label: "published",
        description: "a snapshot of a content item is published",
    },
    EventInfo {
        name: "dynamic-content.content-item.workflow.updated",
        group: "Content item workflow",
        label: "updated",
        description: "a content item's status has been updated",
    },
];

/// A small payload of the kind the CMS sends for `event`, for test events
/// and template previews.
pub fn sample_payload(event: &str) -> serde_json::Value {
    use serde_json::json;
    match event {
        e if e.contains(".edition.") => {
            json!({ "id": "ed-2026-11", "name": "Black Friday", "start": "2026-11-27T00:00:00Z" })
        }
        e if e.contains(".snapshot.") => json!({ "id": "s-7", "rootContentItemId": "c-1" }),
        e if e.ends_with("workflow.updated") => json!({ "id": "c-1", "workflowState": "Approved" }),
        e if e.contains(".content-item.") => json!({ "id": "c-1", "label": "Winter banner", "version": 2 }),
        _ => json!({ "id": "sample" }),
    }
}

/// Regular expression (RE2 and Rust `regex` compatible) for an event name or a
/// `prefix.*` wildcard subscription: lowercase dot-separated segments of
/// letters, digits and inner hyphens. Used by the CRD schema.
pub const SUBSCRIPTION_PATTERN: &str = r"^[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)*(\.\*)?$";

/// Regular expression for a concrete event name (no wildcard).
pub const EVENT_NAME_PATTERN: &str = r"^[a-z0-9]+(-[a-z0-9]+)*(\.[a-z0-9]+(-[a-z0-9]+)*)*$";

/// Whether `subscription` (an exact name or a `prefix.*` wildcard) selects `event`.
pub fn subscription_matches(subscription: &str, event: &str) -> bool {
    match subscription.strip_suffix('*') {
        // `a.b.*` matches `a.b.c` and `a.b.c.d`, never `a.b` itself.
        Some(prefix) => event.len() > prefix.len() && event.starts_with(prefix),
        None => subscription == event,
    }
}

/// Whether `event` is a name the hub knows: built in or one of its custom events.
pub fn is_known_event<'a>(event: &str, custom: impl IntoIterator<Item = &'a str>) -> bool {
    BUILTIN_EVENTS.contains(&event) || custom.into_iter().any(|c| c == event)
}

/// The subscriptions of a webhook that select no event the hub knows: a typo
/// in an exact name, or a wildcard that matches nothing.
pub fn unknown_subscriptions<'a>(subscriptions: &'a [String], custom: &[String]) -> Vec<&'a str> {
    let known = || {
        BUILTIN_EVENTS
            .iter()
            .chain(OPERATIONAL_EVENTS)
            .copied()
            .chain(custom.iter().map(String::as_str))
    };
    subscriptions
        .iter()
        .map(String::as_str)
        .filter(|sub| !known().any(|event| subscription_matches(sub, event)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_lists_every_builtin_event_once() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|e| e.name).collect();
        names.sort();
        let mut builtin = BUILTIN_EVENTS.to_vec();
        builtin.sort();
        assert_eq!(names, builtin);
        assert!(CATALOGUE.iter().all(|e| sample_payload(e.name)["id"].is_string()));
    }

    #[test]
    fn exact_subscription_matches_only_itself() {
        assert!(subscription_matches(
            "dynamic-content.edition.scheduled",
            "dynamic-content.edition.scheduled"
        ));
        assert!(!subscription_matches(
            "dynamic-content.edition.scheduled",
            "dynamic-content.edition.unscheduled"
        ));
    }

    #[test]
    fn wildcard_matches_names_below_its_prefix() {
        let sub = "dynamic-content.content-item.*";
        assert!(subscription_matches(sub, "dynamic-content.content-item.created"));
        assert!(subscription_matches(
            sub,
            "dynamic-content.content-item.workflow.updated"
        ));
        assert!(!subscription_matches(sub, "dynamic-content.content-item"));
        assert!(!subscription_matches(sub, "dynamic-content.content-items.created"));
        assert!(!subscription_matches(sub, "dynamic-content.edition.published"));
    }

    #[test]
    fn unknown_subscriptions_names_typos_and_empty_wildcards() {
        let subs = vec![
            "dynamic-content.content-item.created".to_string(),
            "dynamic-content.content-item.creatd".to_string(),
            "dynamic-content.edition.*".to_string(),
            "shop.*".to_string(),
            "shop.order.paid".to_string(),
        ];
        assert_eq!(
            unknown_subscriptions(&subs, &[]),
            vec!["dynamic-content.content-item.creatd", "shop.*", "shop.order.paid"]
        );
        let custom = vec!["shop.order.paid".to_string()];
        assert_eq!(
            unknown_subscriptions(&subs, &custom),
            vec!["dynamic-content.content-item.creatd"]
        );
    }

    #[test]
    fn known_events_are_builtin_or_custom() {
        assert!(is_known_event("dynamic-content.content-item.assigned", []));
        assert!(is_known_event("shop.order.paid", ["shop.order.paid"]));
        assert!(!is_known_event("shop.order.paid", []));
    }
}
