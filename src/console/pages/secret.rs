//! The signing secret panel: copy, regenerate, replace.

use super::*;

pub(super) struct SecretView {
    pub(super) secret_name: String,
    pub(super) revealed: Option<String>,
    /// The `whsec_…` value Standard Webhooks libraries take, when revealed.
    pub(super) standard_webhooks: Option<String>,
    pub(super) previous_until: Option<String>,
    pub(super) generated: bool,
    /// With asymmetric signing: the public key (`whpk_…`) receivers verify
    /// `v1a` signatures with (not a secret: shown to anyone who sees the page).
    pub(super) public_key: Option<String>,
    pub(super) previous_public_key: Option<String>,
}

pub(super) async fn secret_view(session: &Session, ns: &str, webhook: &Webhook, reveal: bool) -> Option<SecretView> {
    let reference = webhook
        .spec
        .secret_ref
        .clone()
        .or_else(|| webhook.status.as_ref().and_then(|s| s.secret_ref.clone()))?;
    let signing = webhook.status.as_ref().and_then(|s| s.signing.as_ref());
    let mut view = SecretView {
        secret_name: reference.name.clone(),
        revealed: None,
        standard_webhooks: None,
        previous_until: None,
        generated: webhook.spec.secret_ref.is_none(),
        public_key: signing.and_then(|s| s.public_key.clone()),
        previous_public_key: signing.and_then(|s| s.previous_public_key.clone()),
    };
    // Read only when needed: a user without Secret rights still sees the page.
    if let Ok(secret) = Api::<Secret>::namespaced(session.client.clone(), ns)
        .get(&reference.name)
        .await
    {
        view.previous_until = secrets::previous_expires_at(&secret)
            .filter(|t| *t > jiff::Timestamp::now())
            .map(|t| t.to_string());
        if reveal {
            view.revealed = secrets::value(&secret, &reference.key).map(str::to_string);
            view.standard_webhooks = view
                .revealed
                .as_deref()
                .map(crate::delivery::signing::standard_webhooks_secret);
        }
    }
    Some(view)
}

/// The signing secret as plain text, for the Copy button.
pub(crate) async fn secret_value(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let w = or_page!(read_webhook(&session, &ns, &name).await);
    let Some(reference) = w
        .spec
        .secret_ref
        .clone()
        .or_else(|| w.status.and_then(|s| s.secret_ref))
    else {
        return message(
            StatusCode::NOT_FOUND,
            "No secret yet",
            "The controller has not generated this webhook's secret yet.",
        );
    };
    match Api::<Secret>::namespaced(session.client.clone(), &ns)
        .get(&reference.name)
        .await
    {
        Ok(secret) => match secrets::value(&secret, &reference.key) {
            Some(v) => (
                [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                v.to_string(),
            )
                .into_response(),
            None => message(StatusCode::NOT_FOUND, "No secret yet", "The Secret has no value yet."),
        },
        Err(e) => api_problem(&e, &format!("read Secret {}", reference.name)),
    }
}

pub(crate) async fn regenerate_secret(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    or_page!(checked(&session, &body));
    match stamp::<Webhook>(&session, &ns, &name, ROTATE_SECRET_ANNOTATION).await {
        Ok(_) => notice(
            &ns,
            &name,
            "Regenerating: the new secret signs in a moment; the previous one keeps signing until the hub's rotation overlap ends.",
        ),
        Err(e) => api_problem(&e, &format!("regenerate the secret of Webhook {name}")),
    }
}

pub(crate) async fn replace_secret(
    Extension(session): Extension<Arc<Session>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = or_page!(checked(&session, &body));
    let value = fields.get("value").trim().to_string();
    if value.len() < 16 {
        return notice(&ns, &name, "Not replaced: a secret needs at least 16 characters.");
    }
    let w = or_page!(read_webhook(&session, &ns, &name).await);
    let Some(reference) = w
        .spec
        .secret_ref
        .clone()
        .or_else(|| w.status.and_then(|s| s.secret_ref))
    else {
        return notice(&ns, &name, "Not replaced: the webhook has no secret yet.");
    };
    let patch = serde_json::json!({ "stringData": { reference.key.clone(): value } });
    match Api::<Secret>::namespaced(session.client.clone(), &ns)
        .patch(&reference.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => notice(
            &ns,
            &name,
            "Replaced: deliveries are signed with your value from now on.",
        ),
        Err(e) => api_problem(&e, &format!("change Secret {}", reference.name)),
    }
}
