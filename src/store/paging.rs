//! Lists a page at a time, newest first, so a list never holds more than a
//! page of deliveries in memory (the history API serves every tenant from
//! one process). A page ends with a token naming a place in the order, not
//! an item, so rows made or removed between pages never make another row
//! appear twice.

use super::StoreError;
use crate::resources::delivery::Delivery;
use kube::ResourceExt;

/// One page of a list, newest first.
#[derive(Debug, Default)]
pub struct Listed {
    pub deliveries: Vec<Delivery>,
    /// Where the next page starts, when more follow: a token only the
    /// store that gave it reads.
    pub next: Option<String>,
}

/// How many of each webhook's newest deliveries a store that cannot page
/// (the Kubernetes API lists whole) reads for one page.
pub const PAGED_MOST: usize = 500;

/// Where a delivery stands in a list of a store that cannot page: newest
/// first by when it was received, then by namespace and name.
fn key(delivery: &Delivery) -> (String, String, String) {
    let received = delivery
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| delivery.spec.event.received_at.0.to_string());
    (received, delivery.namespace().unwrap_or_default(), delivery.name_any())
}

/// The page after `after` of `found` (read whole), at most `limit` long.
pub fn page_in_memory(found: Vec<Delivery>, after: Option<&str>, limit: usize) -> Result<Listed, StoreError> {
    let after: Option<(String, String, String)> = match after {
        Some(token) => Some(serde_json::from_str(token).map_err(|_| expired())?),
        None => None,
    };
    let mut rest: Vec<Delivery> = found
        .into_iter()
        .filter(|d| after.as_ref().is_none_or(|after| key(d) < *after))
        .collect();
    rest.sort_by_key(|d| std::cmp::Reverse(key(d)));
    let limit = limit.max(1);
    let next = (rest.len() > limit).then(|| {
        rest.truncate(limit);
        serde_json::to_string(&key(rest.last().expect("limit ≥ 1"))).expect("strings")
    });
    Ok(Listed { deliveries: rest, next })
}

/// A continue token this store did not give.
pub fn expired() -> StoreError {
    StoreError::Expired("the continue token is not one this server gave; list again from the start".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::DeliverySpec;
    use crate::resources::delivery::EventRef;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn delivery(name: &str, at: &str) -> Delivery {
        let mut d = Delivery::new(
            name,
            DeliverySpec {
                webhook: "shop".into(),
                hub: "main".into(),
                event: EventRef {
                    id: name.into(),
                    name: "e".into(),
                    received_at: MicroTime(at.parse().unwrap()),
                    trace: None,
                },
                payload: "{}".into(),
            },
        );
        d.metadata.namespace = Some("a".into());
        d
    }

    #[test]
    fn paging_returns_every_row_once_newest_first_even_with_rows_added_between_pages() {
        let items: Vec<Delivery> = (0..7)
            .map(|i| delivery(&format!("d{i}"), &format!("2026-12-04T10:00:0{i}Z")))
            .collect();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut now = items.clone();
            // A newer row made while paging belongs to a later list, not this one.
            if token.is_some() {
                now.push(delivery("late", "2026-12-04T11:00:00Z"));
            }
            let page = page_in_memory(now, token.as_deref(), 3).unwrap();
            assert!(page.deliveries.len() <= 3);
            seen.extend(page.deliveries.iter().map(|d| d.name_any()));
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, ["d6", "d5", "d4", "d3", "d2", "d1", "d0"]);
        assert!(matches!(
            page_in_memory(items, Some("not-a-token"), 3),
            Err(StoreError::Expired(_))
        ));
    }
}
