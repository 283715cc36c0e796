//! Custom payloads: Handlebars templates rendered with the event.
//!
//! Templates see `id`, `name`, `payload` and `receivedAt`. Values are
//! inserted as they are (no HTML escaping); `{{json payload.x}}` inserts a
//! value as JSON, quoted and escaped where needed.

use handlebars::{Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason};
use serde_json::Value;

/// A template that does not compile or render, with Handlebars' reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("customPayload: {0}")]
pub struct TemplateError(pub String);

fn engine() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.register_escape_fn(handlebars::no_escape);
    hb.register_helper("json", Box::new(json_helper));
    hb
}

fn json_helper(h: &Helper, _: &Handlebars, _: &Context, _: &mut RenderContext, out: &mut dyn Output) -> HelperResult {
    let value = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?
        .value();
    out.write(&value.to_string())?;
    Ok(())
}

/// Checks that `template` compiles.
pub fn check(template: &str) -> Result<(), TemplateError> {
    handlebars::Template::compile(template)
        .map(drop)
        .map_err(|e| TemplateError(e.to_string()))
}

/// Renders `template` with `data` (the event).
pub fn render(template: &str, data: &Value) -> Result<String, TemplateError> {
    engine()
        .render_template(template, data)
        .map_err(|e| TemplateError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({ "id": "e1", "name": "dynamic-content.snapshot.published",
                "payload": { "id": "s-1", "label": "Grüße \"quoted\" <b>", "count": 3 } })
    }

    #[test]
    fn renders_fields_without_html_escaping() {
        let out = render("{{name}} {{payload.id}} {{payload.label}}", &event()).unwrap();
        assert_eq!(out, "dynamic-content.snapshot.published s-1 Grüße \"quoted\" <b>");
    }

    #[test]
    fn json_helper_yields_valid_json() {
        let out = render(
            r#"{"event": {{json name}}, "label": {{json payload.label}}, "all": {{json payload}}}"#,
            &event(),
        )
        .unwrap();
        let parsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["label"], "Grüße \"quoted\" <b>");
        assert_eq!(parsed["all"]["count"], 3);
    }

    #[test]
    fn broken_templates_are_reported() {
        assert!(check("{{#if name}}unclosed").is_err());
        assert!(check("{{name}}").is_ok());
    }
}
