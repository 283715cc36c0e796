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
    let known = || BUILTIN_EVENTS.iter().copied().chain(custom.iter().map(String::as_str));
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
