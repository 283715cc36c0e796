//! Custom payloads: Handlebars templates rendered with the event.
//!
//! Templates see `id`, `name`, `payload` and `receivedAt`. A template is
//! JSON, not HTML: `{{payload.x}}` inserts a value escaped as the inside of a
//! JSON string (quotes, backslashes, control characters), so it belongs
//! between quotes; `{{json payload.x}}` inserts a value as JSON (strings
//! quoted, objects and arrays whole). What a template renders must be JSON:
//! anything else is an error of the attempt, not a request to the handler.
//!
//! Templates are written by tenants, so their cost is bounded before use:
//! at most 16 KiB, no partials or decorators (which can recurse without
//! end), no `{{#each}}` inside another (which multiplies the work by the
//! payload's size), and at most 1 MiB of output.

use handlebars::template::TemplateElement;
use handlebars::{Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason};
use serde_json::Value;

/// The longest template accepted.
pub const MAX_TEMPLATE_LEN: usize = 16 * 1024;
/// The most a template may render.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// A template that does not compile or render, with Handlebars' reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("customPayload: {0}")]
pub struct TemplateError(pub String);

fn engine() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.register_escape_fn(json_string_escape);
    hb.register_helper("json", Box::new(json_helper));
    hb
}

/// `s` as the inside of a JSON string literal.
fn json_string_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("a string serialises");
    quoted[1..quoted.len() - 1].to_string()
}

fn json_helper(h: &Helper, _: &Handlebars, _: &Context, _: &mut RenderContext, out: &mut dyn Output) -> HelperResult {
    let value = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("json", 0))?
        .value();
    out.write(&value.to_string())?;
    Ok(())
}

/// Checks that `template` compiles and stays within the bounds above.
pub fn check(template: &str) -> Result<(), TemplateError> {
    if template.len() > MAX_TEMPLATE_LEN {
        return Err(TemplateError(format!(
            "the template is {} bytes; at most {MAX_TEMPLATE_LEN} are allowed",
            template.len()
        )));
    }
    let compiled = handlebars::Template::compile(template).map_err(|e| TemplateError(e.to_string()))?;
    check_elements(&compiled.elements, 0)
}

fn check_elements(elements: &[TemplateElement], each_depth: usize) -> Result<(), TemplateError> {
    for element in elements {
        match element {
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err(TemplateError("partials ({{> name}}) are not supported".into()));
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(TemplateError(
                    "decorators and inline partials ({{#*inline}}) are not supported".into(),
                ));
            }
            TemplateElement::HelperBlock(h) | TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                let depth = each_depth + usize::from(h.block && h.name.as_name() == Some("each"));
                if depth > 1 {
                    return Err(TemplateError(
                        "{{#each}} inside another {{#each}} is not supported (its cost grows with the square of the payload)"
                            .into(),
                    ));
                }
                for inner in [&h.template, &h.inverse].into_iter().flatten() {
                    check_elements(&inner.elements, depth)?;
                }
            }
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            // A kind a later handlebars adds: refused until it is understood.
            _ => return Err(TemplateError("the template uses an unsupported construct".into())),
        }
    }
    Ok(())
}

/// Collects output, refusing more than `MAX_OUTPUT` bytes.
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(std::io::Error::other(format!("the output exceeds {MAX_OUTPUT} bytes")));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `template` with `data` (the event), after the same checks; the
/// result is JSON. Synchronous and CPU-bound: call it off the async threads.
pub fn render(template: &str, data: &Value) -> Result<String, TemplateError> {
    check(template)?;
    let mut out = Bounded(Vec::new());
    engine()
        .render_template_to_write(template, data, &mut out)
        .map_err(|e| TemplateError(e.to_string()))?;
    // serde_json's message names a position and what it expected, never the text.
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&out.0) {
        return Err(TemplateError(format!(
            "the rendered body is not JSON ({e}); put {{{{value}}}} inside quotes, or insert whole values with {{{{json value}}}}"
        )));
    }
    String::from_utf8(out.0).map_err(|e| TemplateError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The docs' custom payload example (examples/webhook-options.yaml)
    /// renders the JSON it promises.
    #[test]
    fn the_documented_custom_payload_renders() {
        let webhook: crate::resources::Webhook =
            serde_yaml::from_str(include_str!("../examples/webhook-options.yaml")).unwrap();
        let template = webhook.spec.custom_payload.expect("the example has a template");
        let event = json!({ "id": "e1", "name": "dynamic-content.content-item.updated", "receivedAt": "2026-12-04T10:00:00Z",
                            "payload": { "id": "c-\"1\"", "locale": "en-GB" } });
        let body: Value = serde_json::from_str(&render(&template, &event).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({ "type": "dynamic-content.content-item.updated", "item": "c-\"1\"",
                    "receivedAt": "2026-12-04T10:00:00Z", "source": { "id": "c-\"1\"", "locale": "en-GB" } })
        );
    }

    /// The docs' payload examples (examples/payloads/) render, for the
    /// sample event, the JSON each file states in its comment.
    #[test]
    fn the_payload_examples_render_what_they_say() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/payloads");
        let mut event: Value =
            serde_json::from_str(include_str!("../examples/events/content-item-updated.json")).unwrap();
        event["receivedAt"] = json!("2026-12-04T10:00:00Z");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let stated = text
                .lines()
                .skip_while(|l| !l.contains("it renders"))
                .nth(1)
                .and_then(|l| l.strip_prefix("# "))
                .unwrap_or_else(|| panic!("{}: no '# it renders' comment", path.display()));
            let webhook: crate::resources::Webhook = serde_yaml::from_str(&text).unwrap();
            let rendered = render(&webhook.spec.custom_payload.unwrap(), &event).unwrap();
            let rendered: Value = serde_json::from_str(&rendered).unwrap();
            assert_eq!(
                rendered,
                serde_json::from_str::<Value>(stated).unwrap(),
                "{}",
                path.display()
            );
            checked += 1;
        }
        assert!(checked >= 3, "the examples were found ({checked})");
    }

    fn event() -> Value {
        json!({ "id": "e1", "name": "dynamic-content.snapshot.published",
                "payload": { "id": "s-1", "label": "Grüße \"quoted\" <b>", "count": 3 } })
    }

    #[test]
    fn values_are_escaped_as_json_strings_not_html() {
        let out = render(r#""{{name}} {{payload.id}} {{payload.label}}""#, &event()).unwrap();
        assert_eq!(out, r#""dynamic-content.snapshot.published s-1 Grüße \"quoted\" <b>""#);
    }

    #[test]
    fn quotes_backslashes_newlines_and_unicode_render_valid_json() {
        let label = "say \"hi\"\\ back\nslash\ttab \u{1} é 😀 </script>";
        let data =
            json!({ "name": "n", "payload": { "label": label, "count": 3, "nested": { "a": [1, { "b": "x\"y" }] } } });
        let out = render(
            r#"{"label": "{{payload.label}}", "count": {{payload.count}}, "nested": {{json payload.nested}}, "b": "{{payload.nested.a.1.b}}"}"#,
            &data,
        )
        .unwrap();
        let parsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["label"], label);
        assert_eq!(parsed["count"], 3);
        assert_eq!(parsed["nested"], data["payload"]["nested"]);
        assert_eq!(parsed["b"], "x\"y");
    }

    #[test]
    fn a_template_that_does_not_render_json_is_an_error_naming_the_fix() {
        // An object inserted without json, and a string outside quotes.
        for template in [
            r#"{"all": {{payload}}}"#,
            r#"{"label": {{payload.label}}}"#,
            "plain text",
        ] {
            let err = render(template, &event()).unwrap_err().to_string();
            assert!(
                err.contains("not JSON") && err.contains("{{json value}}"),
                "{template}: {err}"
            );
            assert!(!err.contains("Grüße"), "the message does not quote the payload: {err}");
        }
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

    #[test]
    fn recursion_and_multiplying_templates_are_refused_before_use() {
        let refused = [
            (r#"{{#*inline "p"}}{{> p}}{{/inline}}{{> p}}"#, "inline partials"),
            ("{{> other}}", "partials"),
            ("{{#> layout}}x{{/layout}}", "partials"),
            (
                "{{#each payload.a}}{{#each ../payload.a}}x{{/each}}{{/each}}",
                "inside another",
            ),
            (
                "{{#if name}}{{#each payload.a}}{{#with this}}{{#each ../payload.a}}{{/each}}{{/with}}{{/each}}{{/if}}",
                "inside another",
            ),
        ];
        for (template, why) in refused {
            let err = check(template).unwrap_err().to_string();
            assert!(err.contains(why), "{template}: {err}");
            assert!(
                render(template, &event()).is_err(),
                "{template} is refused at render too"
            );
        }
        assert!(
            check(&"x".repeat(MAX_TEMPLATE_LEN + 1))
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
        assert!(check("{{#each payload.a}}{{this}}{{/each}}{{#each payload.b}}{{this}}{{/each}}").is_ok());
    }

    #[test]
    fn output_is_bounded() {
        let big = json!({ "payload": { "a": (0..2000).collect::<Vec<_>>() } });
        let template = format!("{{{{#each payload.a}}}}{}{{{{/each}}}}", "x".repeat(1000));
        let err = render(&template, &big).unwrap_err().to_string();
        assert!(err.contains("exceeds"), "{err}");
    }
}
