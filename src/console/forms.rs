//! The webhook form: from posted fields to a `WebhookSpec`, and from the
//! API server's refusal back to the fields it names. Pure, so both are
//! tested without a browser.

use crate::resources::SecretKeyRef;
use crate::resources::webhook::{HeaderValueSource, HttpMethod, WebhookFilter, WebhookHeader, WebhookSpec};
use std::collections::BTreeMap;

/// A posted form: every (name, value) pair in order (checkboxes repeat).
#[derive(Debug, Default)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Self {
        Self(form_urlencoded::parse(body).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Problems with the form itself, by field, before the API server sees it.
pub type FieldErrors = BTreeMap<String, String>;

/// The spec a form describes. `hub` is the webhook's hub.
pub fn spec_from(fields: &Fields, hub: &str) -> Result<WebhookSpec, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut events = fields.all("events");
    events.extend(
        fields
            .get("otherEvents")
            .split(['\n', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    );
    events.dedup();
    let method = match fields.get("method") {
        "" | "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        other => {
            errors.insert(
                "method".into(),
                format!("{other:?} is not one of POST, PUT, PATCH, DELETE"),
            );
            HttpMethod::Post
        }
    };
    let headers = parse_lines(fields.get("headers"), "headers", &mut errors, parse_header);
    let filters = parse_lines(fields.get("filters"), "filters", &mut errors, parse_filter);
    let custom_payload = Some(fields.get("customPayload").trim().to_string()).filter(|s| !s.is_empty());
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(WebhookSpec {
        hub: hub.to_string(),
        label: fields.get("label").trim().to_string(),
        url: fields.get("url").trim().to_string(),
        events,
        active: fields.get("active") == "on",
        paused: false,
        method,
        headers,
        filters,
        custom_payload,
        secret_ref: None,
        retry: None,
        ordering: None,
        tls: None,
        oauth2: None,
        delivery: None,
        signing: None,
    })
}

fn parse_lines<T>(
    text: &str,
    field: &str,
    errors: &mut FieldErrors,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let mut parsed = vec![];
    for (n, line) in text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty()) {
        match parse(line) {
            Ok(v) => parsed.push(v),
            Err(e) => {
                errors.insert(field.to_string(), format!("line {}: {e}", n + 1));
            }
        }
    }
    parsed
}

/// `Name: value`, or `Name: secret:SECRET/KEY` for a value from a Secret.
fn parse_header(line: &str) -> Result<WebhookHeader, String> {
    let (name, value) = line
        .split_once(':')
        .ok_or("write a header as \"Name: value\" or \"Name: secret:SECRET/KEY\"")?;
    let (name, value) = (name.trim().to_string(), value.trim());
    match value.strip_prefix("secret:") {
        Some(reference) => {
            let (secret, key) = reference
                .split_once('/')
                .ok_or("a Secret reference is secret:SECRET/KEY")?;
            Ok(WebhookHeader {
                name,
                value: None,
                value_from: Some(HeaderValueSource {
                    secret_key_ref: SecretKeyRef {
                        name: secret.trim().into(),
                        key: key.trim().into(),
                    },
                }),
            })
        }
        None => Ok(WebhookHeader {
            name,
            value: Some(value.to_string()),
            value_from: None,
        }),
    }
}

/// `$.path == value` or `$.path in a, b`.
fn parse_filter(line: &str) -> Result<WebhookFilter, String> {
    if let Some((path, value)) = line.split_once("==") {
        return Ok(WebhookFilter {
            path: path.trim().into(),
            equal: Some(value.trim().into()),
            in_: None,
        });
    }
    if let Some((path, values)) = line.split_once(" in ") {
        return Ok(WebhookFilter {
            path: path.trim().into(),
            equal: None,
            in_: Some(values.split(',').map(|v| v.trim().to_string()).collect()),
        });
    }
    Err("write a filter as \"$.path == value\" or \"$.path in a, b\"".into())
}

/// The form's text for an existing spec (the inverse of `spec_from`).
pub fn headers_text(spec: &WebhookSpec) -> String {
    spec.headers
        .iter()
        .map(|h| match (&h.value, &h.value_from) {
            (Some(v), _) => format!("{}: {v}", h.name),
            (None, Some(f)) => format!("{}: secret:{}/{}", h.name, f.secret_key_ref.name, f.secret_key_ref.key),
            (None, None) => format!("{}:", h.name),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn filters_text(spec: &WebhookSpec) -> String {
    spec.filters
        .iter()
        .map(|f| match (&f.equal, &f.in_) {
            (Some(v), _) => format!("{} == {v}", f.path),
            (None, Some(values)) => format!("{} in {}", f.path, values.join(", ")),
            (None, None) => f.path.clone(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The form fields an API server refusal names (`spec.url: Invalid value:
/// …`), each with its messages; what names no field goes under "".
pub fn errors_from_api(message: &str) -> FieldErrors {
    let mut errors = FieldErrors::new();
    // Refusals list their causes after "is invalid: ", separated by ", " or
    // inside "[...]"; each cause starts with the field path.
    let causes = message.split_once("is invalid: ").map(|(_, c)| c).unwrap_or(message);
    let causes = causes.trim_start_matches('[').trim_end_matches(']');
    for cause in split_causes(causes) {
        let field = cause
            .strip_prefix("spec.")
            .and_then(|rest| rest.split(['.', ':', '[']).next())
            .filter(|f| !f.is_empty())
            .unwrap_or("")
            .to_string();
        let entry = errors.entry(field).or_default();
        if !entry.is_empty() {
            entry.push_str("; ");
        }
        entry.push_str(cause.trim());
    }
    errors
}

/// Splits at ", " only where the next cause begins (a field path).
fn split_causes(text: &str) -> Vec<&str> {
    let mut causes = vec![];
    let mut start = 0;
    for (i, _) in text.match_indices(", ") {
        let next = &text[i + 2..];
        if next.starts_with("spec.") || next.starts_with("metadata.") || next.starts_with("<nil>") {
            causes.push(&text[start..i]);
            start = i + 2;
        }
    }
    causes.push(&text[start..]);
    causes.into_iter().filter(|c| !c.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        Fields(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn a_form_becomes_a_spec_and_back() {
        let f = fields(&[
            ("label", " Shop "),
            ("url", "https://shop.example/hook"),
            ("events", "dynamic-content.content-item.created"),
            ("events", "dynamic-content.content-item.updated"),
            ("otherEvents", "dynamic-content.snapshot.*\n"),
            ("active", "on"),
            ("method", "PUT"),
            ("headers", "X-Team: content\nX-Key: secret:shop-api/key"),
            ("filters", "$.payload.locale in en-GB, de-DE\n$.payload.id == c-1"),
            ("customPayload", ""),
        ]);
        let spec = spec_from(&f, "main").unwrap();
        assert_eq!(spec.label, "Shop");
        assert_eq!(spec.events.len(), 3);
        assert!(spec.active);
        assert_eq!(spec.method, HttpMethod::Put);
        assert_eq!(
            spec.headers[1].value_from.as_ref().unwrap().secret_key_ref.name,
            "shop-api"
        );
        assert_eq!(
            spec.filters[0].in_.as_deref(),
            Some(&["en-GB".to_string(), "de-DE".to_string()][..])
        );
        assert_eq!(spec.custom_payload, None);
        assert_eq!(headers_text(&spec), "X-Team: content\nX-Key: secret:shop-api/key");
        assert_eq!(
            filters_text(&spec),
            "$.payload.locale in en-GB, de-DE\n$.payload.id == c-1"
        );
    }

    #[test]
    fn malformed_lines_are_named() {
        let f = fields(&[("headers", "no colon here"), ("filters", "$.a ~ b"), ("method", "GET")]);
        let errors = spec_from(&f, "main").unwrap_err();
        assert!(errors["headers"].starts_with("line 1:"));
        assert!(errors.contains_key("filters") && errors.contains_key("method"));
    }

    #[test]
    fn api_refusals_are_put_next_to_the_fields_they_name() {
        let message = r#"Webhook.hookrelay.dev "x" is invalid: [spec.url: Invalid value: "ftp://x": url must be an http or https URL with a host, spec.events: Required value, spec.label: Invalid value: "": label must be 1 to 128 characters, <nil>: Invalid value: null: some validation rules were not checked]"#;
        let errors = errors_from_api(message);
        assert!(errors["url"].contains("http or https"), "{errors:?}");
        assert!(errors["events"].contains("Required"));
        assert!(errors["label"].contains("1 to 128"));
        assert!(errors[""].contains("not checked"));
    }
}
