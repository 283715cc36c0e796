//! Webhook filters: RFC 9535 JSONPath conditions on the event
//! `{"id", "name", "payload"}`.

use crate::resources::webhook::WebhookFilter;
use serde_json::Value;
use serde_json_path::JsonPath;

/// A filter whose path does not parse; names the path and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("filter path {path:?} is not a valid JSONPath: {reason}")]
pub struct InvalidPath {
    pub path: String,
    pub reason: String,
}

/// Parses every filter's path, for reporting a bad one before any event.
pub fn check(filters: &[WebhookFilter]) -> Result<(), InvalidPath> {
    filters.iter().try_for_each(|f| parse(&f.path).map(drop))
}

fn parse(path: &str) -> Result<JsonPath, InvalidPath> {
    JsonPath::parse(path).map_err(|e| InvalidPath {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

/// A filter with its path parsed, for use on many events.
pub struct Compiled {
    path: JsonPath,
    /// `equal`, or the values of `in`; `None`: neither was given (never holds).
    wanted: Option<Vec<String>>,
}

/// Parses every filter's path once.
pub fn compile(filters: &[WebhookFilter]) -> Result<Vec<Compiled>, InvalidPath> {
    filters
        .iter()
        .map(|f| {
            Ok(Compiled {
                path: parse(&f.path)?,
                wanted: match (&f.equal, &f.in_) {
                    (Some(v), _) => Some(vec![v.clone()]),
                    (None, Some(vs)) => Some(vs.clone()),
                    (None, None) => None,
                },
            })
        })
        .collect()
}

/// Whether every filter holds for `event`. A filter holds when some value its
/// path selects equals `equal` or one of `in`; strings compare as they are,
/// other values by their JSON text (`42`, `true`, `null`).
pub fn hold(filters: &[Compiled], event: &Value) -> bool {
    filters.iter().all(|filter| {
        let Some(wanted) = &filter.wanted else { return false };
        filter.path.query(event).all().into_iter().any(|node| {
            let text = match node {
                Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
                other => std::borrow::Cow::Owned(other.to_string()),
            };
            wanted.iter().any(|w| *w == text)
        })
    })
}

/// `compile` then `hold`, for one event.
pub fn matches(filters: &[WebhookFilter], event: &Value) -> Result<bool, InvalidPath> {
    Ok(hold(&compile(filters)?, event))
}

/// The first value `path` selects in `event`, as text (strings as they are,
/// other values as JSON): a delivery's ordering key. `None` if nothing.
pub fn first_value(path: &str, event: &Value) -> Result<Option<String>, InvalidPath> {
    let path = parse(path)?;
    Ok(path.query(event).all().into_iter().next().map(|node| match node {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }))
}

/// Checks an ordering key's path.
pub fn check_path(path: &str) -> Result<(), InvalidPath> {
    parse(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ordering_keys_are_the_first_value_as_text() {
        let event = json!({ "id": "e", "payload": { "id": "c-1", "n": 7 } });
        assert_eq!(first_value("$.payload.id", &event).unwrap().as_deref(), Some("c-1"));
        assert_eq!(first_value("$.payload.n", &event).unwrap().as_deref(), Some("7"));
        assert_eq!(first_value("$.payload.missing", &event).unwrap(), None);
        assert!(first_value("$[", &event).is_err());
    }

    fn equal(path: &str, v: &str) -> WebhookFilter {
        WebhookFilter {
            path: path.into(),
            equal: Some(v.into()),
            in_: None,
        }
    }

    fn one_of(path: &str, vs: &[&str]) -> WebhookFilter {
        WebhookFilter {
            path: path.into(),
            equal: None,
            in_: Some(vs.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn event() -> Value {
        json!({
            "id": "e1",
            "name": "dynamic-content.content-item.updated",
            "payload": {
                "contentTypeUri": "https://example.com/blog",
                "locale": "de-DE",
                "version": 7,
                "archived": false,
                "tags": ["news", "featured"]
            }
        })
    }

    #[test]
    fn no_filters_match_everything() {
        assert_eq!(matches(&[], &event()), Ok(true));
    }

    #[test]
    fn equal_and_in_select_by_value() {
        assert_eq!(
            matches(
                &[equal("$.payload.contentTypeUri", "https://example.com/blog")],
                &event()
            ),
            Ok(true)
        );
        assert_eq!(
            matches(
                &[equal("$.payload.contentTypeUri", "https://example.com/shop")],
                &event()
            ),
            Ok(false)
        );
        assert_eq!(
            matches(&[one_of("$.payload.locale", &["en-GB", "de-DE"])], &event()),
            Ok(true)
        );
        assert_eq!(matches(&[one_of("$.payload.locale", &["en-GB"])], &event()), Ok(false));
    }

    #[test]
    fn all_filters_must_hold() {
        let both = [
            equal("$.name", "dynamic-content.content-item.updated"),
            equal("$.payload.locale", "en-GB"),
        ];
        assert_eq!(matches(&both, &event()), Ok(false));
    }

    #[test]
    fn non_strings_compare_by_json_text_and_arrays_by_any_element() {
        assert_eq!(matches(&[equal("$.payload.version", "7")], &event()), Ok(true));
        assert_eq!(matches(&[equal("$.payload.archived", "false")], &event()), Ok(true));
        assert_eq!(matches(&[equal("$.payload.tags[*]", "featured")], &event()), Ok(true));
        assert_eq!(matches(&[equal("$.payload.missing", "x")], &event()), Ok(false));
    }

    #[test]
    fn invalid_paths_are_reported_with_the_path() {
        let bad = [equal("$.payload[", "x")];
        let err = check(&bad).unwrap_err();
        assert_eq!(err.path, "$.payload[");
        assert!(matches(&bad, &event()).is_err());
    }
}
