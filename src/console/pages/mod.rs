//! The console's screens, following the CMS's: hubs, a hub's webhooks, the
//! add/edit form, the secret, recent deliveries (live), delivery details,
//! and test events. Every call uses the signed-in user's client.

// Helpers hand a finished error page back to the handler, which returns it
// at once: the size of `Response` in `Err` costs nothing that matters here.
#![allow(clippy::result_large_err)]

use super::forms::{self, FieldErrors, Fields};
use super::health::{self, Window};
use super::{Console, Session};
use crate::events::{CATALOGUE, sample_payload};
use crate::resources::delivery::{Delivery, Header, Phase};
use crate::resources::webhook::WebhookSpec;
use crate::resources::{Hub, ROTATE_SECRET_ANNOTATION, Webhook};
use crate::secrets;
use crate::store::{NewDelivery, StoreError, allowed};
use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// `expr?` for a handler that answers with a page: an `Err` is the page.
macro_rules! or_page {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(page) => return page,
        }
    };
}

// The screens, one module each (the macro above is theirs too).
mod deliveries;
mod details;
mod form;
mod hubs;
mod secret;
mod test_event;
mod webhook_list;

pub(crate) use deliveries::*;
pub(crate) use details::*;
pub(crate) use form::*;
pub(crate) use hubs::*;
pub(crate) use secret::*;
pub(crate) use test_event::*;
pub(crate) use webhook_list::*;

/// What every page shows around its content.
pub(crate) struct Chrome {
    pub ns: String,
    pub user: String,
    pub csrf: String,
    pub can_edit: bool,
}

/// A path segment as it goes into a URL.
pub(crate) fn url_part(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' | '_' => c.to_string(),
            c => c.to_string().bytes().map(|b| format!("%{b:02X}")).collect(),
        })
        .collect()
}

fn page(template: impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the page: {e}")).into_response(),
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    text: &'a str,
}

pub(crate) fn message(status: StatusCode, title: &str, text: &str) -> Response {
    (status, page(MessagePage { title, text })).into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

pub(crate) fn login_page(enabled: bool, error: Option<String>) -> Response {
    if !enabled {
        return Redirect::to("/").into_response();
    }
    page(LoginPage { error })
}

/// Says what the API server refused, naming RBAC when that is why.
fn api_problem(e: &kube::Error, doing: &str) -> Response {
    match e {
        kube::Error::Api(s) if s.code == 403 => message(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "Your Kubernetes identity may not {doing}. Ask for the hookrelay-edit role in this namespace. ({})",
                s.message
            ),
        ),
        kube::Error::Api(s) if s.code == 404 => message(StatusCode::NOT_FOUND, "Not found", &s.message),
        other => message(
            StatusCode::BAD_GATEWAY,
            "The API server did not answer",
            &format!("{doing}: {other}"),
        ),
    }
}

/// The page for what a delivery store said no to (`doing`: what the user
/// asked for, e.g. "redeliver d-1").
fn store_problem(e: &StoreError, doing: &str) -> Response {
    match e {
        StoreError::Forbidden(reason) => message(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "Your Kubernetes identity may not {doing}. Ask for the hookrelay-edit role in this namespace. ({reason})"
            ),
        ),
        StoreError::NotFound(reason) => message(StatusCode::NOT_FOUND, "Not found", reason),
        StoreError::Busy => message(
            StatusCode::CONFLICT,
            "An attempt is under way",
            "This delivery is being attempted right now; redeliver it once that attempt is recorded.",
        ),
        StoreError::Database(reason) => message(StatusCode::BAD_GATEWAY, "The delivery store did not answer", reason),
        other => message(
            StatusCode::BAD_GATEWAY,
            "The API server did not answer",
            &format!("{doing}: {other}"),
        ),
    }
}

/// Whether the user may change Webhooks in `ns` (RBAC decides; the console
/// only hides what would be refused anyway).
async fn may_edit(client: &kube::Client, ns: &str) -> bool {
    allowed(client, ns, "update", "webhooks", None).await
}

async fn chrome(session: &Session, ns: &str) -> Chrome {
    Chrome {
        ns: ns.to_string(),
        user: session.user.clone(),
        csrf: session.csrf.clone(),
        can_edit: may_edit(&session.client, ns).await,
    }
}

/// The chrome of a fragment a page refetches while open (on every change):
/// it shows links only, so no access review is made for it.
fn fragment_chrome(session: &Session, ns: String) -> Chrome {
    Chrome {
        ns,
        user: session.user.clone(),
        csrf: session.csrf.clone(),
        can_edit: false,
    }
}

/// Refuses a form without this session's CSRF token.
fn checked(session: &Session, body: &Bytes) -> Result<Fields, Response> {
    let fields = Fields::parse(body);
    if bool::from(fields.get("csrf").as_bytes().ct_eq(session.csrf.as_bytes())) {
        Ok(fields)
    } else {
        Err(message(
            StatusCode::FORBIDDEN,
            "Form refused",
            "The form did not come from this console session (its CSRF token is missing or wrong). Reload the page and try again.",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_message_page_has_no_link_its_own_csp_would_block() {
        let response = message(StatusCode::NOT_FOUND, "Not found", "no such webhook");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains("data-back"), "{html}");
        // script-src 'self' blocks javascript: URLs and inline handlers.
        assert!(!html.contains("javascript:") && !html.contains("onclick"), "{html}");
    }
}
