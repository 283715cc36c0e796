//! The web console in a real browser: headless Chromium driven through
//! WebDriver (chromedriver), against `hookrelay console`, controller and
//! ingest on the real control plane. Screenshots of every screen go to
//! `target/console-screenshots/` (the docs' come from there).

mod support;

use fantoccini::Locator;
use hookrelay::resources::{Delivery, Webhook};
use hookrelay::secrets;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use support::browser::{Driver, appears, click, fill, shot, shot_of, text};
use support::receiver::{Receiver, Reply};
use support::stack::{Stack, WAIT, deliveries_of};
use support::{TestEnv, eventually, tool};

const UPDATED: &str = "dynamic-content.content-item.updated";

/// Binds the chart's `hookrelay-view` ClusterRole to `subject` in the namespace.
async fn bind_viewer(env: &TestEnv, name: &str, subject: serde_json::Value) {
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "hookrelay-view" },
        "subjects": [subject],
    }))
    .unwrap();
    env.api::<k8s_openapi::api::rbac::v1::RoleBinding>()
        .create(&Default::default(), &binding)
        .await
        .unwrap();
}

async fn secret_value(env: &TestEnv, webhook: &str) -> String {
    let w = env.api::<Webhook>().get(webhook).await.unwrap();
    let r = w.status.unwrap().secret_ref.unwrap();
    let s = env.api::<Secret>().get(&r.name).await.unwrap();
    secrets::value(&s, &r.key).unwrap().to_string()
}

#[tokio::test]
async fn the_console_manages_webhooks_in_a_real_browser() {
    let stack = Stack::start("console_in_a_browser").await;
    let receiver = Receiver::start().await;
    receiver.set_default("/shop", Reply::status(200).body("thanks from the handler"));
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let (_console, login) = stack
        .env
        .start_console(
            &stack.env.cluster.admin_kubeconfig,
            "admin",
            &[
                "--ingest-url",
                &stack.ingest.url,
                // Only rendered as a link; never followed.
                "--trace-url-template",
                "https://jaeger.example/trace/{traceId}",
            ],
        )
        .await;

    // The login link opens a session once; then the hubs.
    browser.goto(&login).await.unwrap();
    appears(&browser, "a[href$='/hubs/main']").await;
    shot(&browser, "hubs").await;
    click(&browser, "a[href$='/hubs/main']").await;
    appears(&browser, "#empty-state").await;
    shot(&browser, "webhooks-empty").await;

    // Add a webhook: a bad URL is refused with the API server's message next to the field.
    click(&browser, "#empty-state a.button").await;
    appears(&browser, "#webhook-form").await;
    fill(&browser, "#label", "Shop").await;
    fill(&browser, "#url", "ftp://shop.example/hook").await;
    click(&browser, &format!("input[value='{UPDATED}']")).await;
    click(&browser, "#save").await;
    appears(&browser, "#url-error:not(:empty)").await;
    let url_error = text(&browser, "#url-error").await;
    assert!(url_error.contains("http"), "{url_error}");
    shot(&browser, "webhook-form-error").await;
    fill(&browser, "#url", &receiver.url("/shop")).await;
    click(&browser, "#save").await;
    appears(&browser, "#secret-section").await;
    let webhooks: Api<Webhook> = stack.env.api();
    let created = webhooks.list(&ListParams::default()).await.unwrap().items;
    let shop = created
        .iter()
        .find(|w| w.spec.label == "Shop")
        .expect("the form created a Webhook");
    assert_eq!(shop.spec.events, vec![UPDATED.to_string()]);
    let name = shop.metadata.name.clone().unwrap();
    let page = format!(
        "{}/ns/{}/webhooks/{name}",
        login.split("/?").next().unwrap(),
        stack.env.ns
    );

    // The secret: revealed, copied (the copied text is the Secret's value),
    // regenerated, replaced.
    eventually(WAIT, "the generated secret", || async {
        webhooks.get(&name).await.ok()?.status?.secret_ref.map(drop)
    })
    .await;
    browser.goto(&page).await.unwrap();
    click(&browser, "#reveal").await;
    appears(&browser, "#secret-value.revealed").await;
    let value = secret_value(&stack.env, &name).await;
    assert_eq!(text(&browser, "#secret-value").await, value);
    browser
        .execute(
            "window.__copied = null; navigator.clipboard.writeText = async (t) => { window.__copied = t; };",
            vec![],
        )
        .await
        .unwrap();
    click(&browser, "#copy").await;
    let copied = eventually(WAIT, "the copied text", || async {
        browser
            .execute("return window.__copied;", vec![])
            .await
            .ok()?
            .as_str()
            .map(str::to_string)
    })
    .await;
    assert_eq!(copied, value, "Copy puts the Secret's value on the clipboard");
    shot_of(&browser, "#secret-section", "webhook-secret").await;
    click(&browser, "#regenerate").await;
    appears(&browser, "#notice").await;
    let regenerated = eventually(WAIT, "a regenerated secret", || async {
        let now = secret_value(&stack.env, &name).await;
        (now != value).then_some(now)
    })
    .await;
    assert_eq!(regenerated.len(), 128);
    fill(&browser, "#replace-value", "my-own-signing-secret-0123456789").await;
    click(&browser, "#replace").await;
    // The regenerate notice may still be on screen while the form posts:
    // wait for the value itself, not for a notice.
    eventually(WAIT, "the replaced secret", || async {
        (secret_value(&stack.env, &name).await == "my-own-signing-secret-0123456789").then_some(())
    })
    .await;
    appears(&browser, "#notice").await;

    // An event through ingest appears in Recent deliveries without a reload.
    browser.goto(&page).await.unwrap();
    appears(&browser, "#no-deliveries").await;
    let (status, answer) = stack
        .post(json!({ "id": "console-1", "name": UPDATED, "payload": { "id": "c-1" } }))
        .await;
    assert_eq!(status, 202, "{answer}");
    let delivery = deliveries_of(&answer).remove(0);
    appears(&browser, &format!("tr[data-delivery='{delivery}'] td.code")).await;
    eventually(WAIT, "status code 200 in the list", || async {
        let code = text(&browser, &format!("tr[data-delivery='{delivery}'] td.code")).await;
        (code == "200").then_some(())
    })
    .await;
    shot_of(&browser, "#recent", "webhook-deliveries").await;

    // View details: the signature header and the handler's response body.
    click(&browser, &format!("tr[data-delivery='{delivery}'] a")).await;
    appears(&browser, "section.attempt").await;
    let details = browser.source().await.unwrap();
    assert!(
        details.contains("X-Amplience-Webhook-Signature"),
        "the signature header is shown"
    );
    assert!(
        details.contains("thanks from the handler"),
        "the response body is shown"
    );
    assert!(
        text(&browser, "#request-body").await.contains("\"c-1\""),
        "the request body is shown"
    );
    // The event's trace id, as a link to the tracing UI.
    let trace = answer["traceId"].as_str().unwrap().to_string();
    let link = browser
        .find(Locator::Css("#trace a"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap();
    assert_eq!(
        link.as_deref(),
        Some(format!("https://jaeger.example/trace/{trace}").as_str())
    );
    shot(&browser, "delivery-details").await;
    click(&browser, "#redeliver").await;
    let deliveries: Api<Delivery> = stack.env.api();
    eventually(WAIT, "a second attempt after Redeliver", || async {
        let d = deliveries.get(&delivery).await.ok()?;
        (d.status?.attempt_count == 2).then_some(())
    })
    .await;

    // A test event from the console is delivered.
    browser.goto(&page).await.unwrap();
    click(&browser, "#send-test").await;
    appears(&browser, "#notice").await;
    assert!(text(&browser, "#notice").await.contains("Test event sent"));
    eventually(WAIT, "the test event at the handler", || async {
        receiver
            .received("/shop")
            .iter()
            .any(|r| r.json()["payload"]["id"] == "c-1" && r.header("webhook-id") != Some(delivery.as_str()))
            .then_some(())
    })
    .await;

    // The row menu: deactivate, activate, delete (with confirmation).
    let list = format!("{}/ns/{}/hubs/main", login.split("/?").next().unwrap(), stack.env.ns);
    for (action, active) in [("deactivate", false), ("activate", true)] {
        browser.goto(&list).await.unwrap();
        click(&browser, &format!("tr[data-webhook='{name}'] summary")).await;
        if !active {
            shot(&browser, "webhooks-menu").await;
        }
        click(&browser, &format!("tr[data-webhook='{name}'] button[value='{action}']")).await;
        eventually(WAIT, &format!("{action} through the API"), || async {
            (webhooks.get(&name).await.ok()?.spec.active == active).then_some(())
        })
        .await;
    }
    // Pause and resume from the same menu; the row says it is paused.
    for (action, paused) in [("pause", true), ("resume", false)] {
        browser.goto(&list).await.unwrap();
        click(&browser, &format!("tr[data-webhook='{name}'] summary")).await;
        click(&browser, &format!("tr[data-webhook='{name}'] button[value='{action}']")).await;
        eventually(WAIT, &format!("{action} through the API"), || async {
            (webhooks.get(&name).await.ok()?.spec.paused == paused).then_some(())
        })
        .await;
        if paused {
            browser.goto(&list).await.unwrap();
            let row = browser
                .find(Locator::Css(&format!("tr[data-webhook='{name}']")))
                .await
                .unwrap();
            let text = row.text().await.unwrap();
            assert!(text.contains("Paused"), "the row shows the pause: {text}");
            shot(&browser, "webhooks-paused").await;
            // The webhook's page states its delivery controls.
            let page = format!(
                "{}/ns/{}/webhooks/{name}",
                login.split("/?").next().unwrap(),
                stack.env.ns
            );
            browser.goto(&page).await.unwrap();
            let controls = browser
                .find(Locator::Css("#controls"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                controls.contains("Paused") && controls.contains("Signing: symmetric"),
                "{controls}"
            );
            shot(&browser, "webhook-controls").await;
        }
    }
    browser.goto(&list).await.unwrap();
    click(&browser, &format!("tr[data-webhook='{name}'] summary")).await;
    click(&browser, &format!("tr[data-webhook='{name}'] a.danger")).await;
    appears(&browser, "#confirm-delete").await;
    click(&browser, "#confirm-delete").await;
    eventually(WAIT, "the webhook deleted", || async {
        webhooks.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;

    // The login link works once.
    let again = reqwest::get(&login).await.unwrap();
    assert_eq!(again.status().as_u16(), 401, "a used login link is refused");
    // No session: refused. A wrong CSRF token: refused.
    let base = login.split("/?").next().unwrap().to_string();
    let anonymous = reqwest::get(format!("{base}/ns/{}", stack.env.ns)).await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    browser.goto(&list).await.unwrap();
    let forged = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch(location.pathname + '/new', { method: 'POST', credentials: 'same-origin',
               body: new URLSearchParams({ csrf: 'forged', label: 'x', url: 'https://x.example' }) })
               .then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        forged.as_u64(),
        Some(403),
        "a form without the session's CSRF token is refused"
    );
    browser.close().await.unwrap();
    stack.cleanup().await;
}

/// The sum of a data attribute over the deliveries chart's buckets.
async fn chart_sum(browser: &fantoccini::Client, attribute: &str) -> u64 {
    let script = format!(
        "return [...document.querySelectorAll('#deliveries-chart g.bucket')].reduce((n, g) => n + Number(g.dataset.{attribute}), 0);"
    );
    browser.execute(&script, vec![]).await.unwrap().as_u64().unwrap()
}

/// Posts an event until the storefront webhook takes it (ingest's cache may
/// still hold it inactive just after it was activated again); its delivery.
async fn post_for_storefront(stack: &Stack, note: &str) -> String {
    eventually(WAIT, "the event to make a delivery", || async {
        let id = format!("health-{}", uuid::Uuid::new_v4().simple());
        let (status, answer) = stack
            .post(json!({ "id": id, "name": UPDATED, "payload": { "note": note } }))
            .await;
        assert_eq!(status, 202, "{answer}");
        deliveries_of(&answer)
            .into_iter()
            .find(|d| d.starts_with("storefront-"))
    })
    .await
}

#[tokio::test]
async fn webhook_health_is_drawn_from_known_successes_and_failures() {
    let stack = Stack::start("console_health").await;
    let receiver = Receiver::start().await;
    // Three events succeed; two fail without retries, so they end Failed
    // (each deactivates the webhook, which is activated again, as its
    // owner would).
    receiver.fail_matching("/health", "fail-me", 2);
    let mut spec = support::stack::spec(receiver.url("/health"), &[UPDATED]);
    spec.label = "Storefront".into();
    spec.retry = Some(hookrelay::resources::RetryPolicy {
        max_retries: Some(0),
        window: None,
    });
    stack.webhook("storefront", spec).await;
    // A healthy neighbour on the same events, for the hub's list.
    let mut healthy = support::stack::spec(receiver.url("/search"), &[UPDATED]);
    healthy.label = "Search index".into();
    stack.webhook("search-index", healthy).await;
    let webhooks: Api<Webhook> = stack.env.api();
    let deliveries: Api<Delivery> = stack.env.api();
    for note in ["ok", "ok", "ok", "fail-me", "fail-me"] {
        let name = post_for_storefront(&stack, note).await;
        let done = eventually(WAIT, "the delivery to finish", || async {
            let status = deliveries.get(&name).await.ok()?.status?;
            status.phase.is_finished().then_some(status.phase)
        })
        .await;
        assert_eq!(format!("{done:?}"), if note == "ok" { "Succeeded" } else { "Failed" });
        if note != "ok" {
            eventually(WAIT, "the deactivation", || async {
                (!webhooks.get("storefront").await.ok()?.spec.active).then_some(())
            })
            .await;
            webhooks
                .patch(
                    "storefront",
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "spec": { "active": true } })),
                )
                .await
                .unwrap();
        }
    }

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let (_console, login) = stack
        .env
        .start_console(
            &stack.env.cluster.admin_kubeconfig,
            "admin",
            &["--ingest-url", &stack.ingest.url],
        )
        .await;
    browser.goto(&login).await.unwrap();
    appears(&browser, "a[href$='/hubs/main']").await;
    let base = login.split("/?").next().unwrap().to_string();
    browser
        .goto(&format!("{base}/ns/{}/webhooks/storefront?window=hour", stack.env.ns))
        .await
        .unwrap();
    appears(&browser, "#deliveries-chart").await;
    assert_eq!(text(&browser, "#health-deliveries").await, "5");
    assert_eq!(text(&browser, "#health-success-rate").await, "60.0%");
    assert_eq!(text(&browser, "#health-attempts").await, "1.00");
    assert!(text(&browser, "#health-latency").await.starts_with("p50 "));
    assert_eq!(chart_sum(&browser, "succeeded").await, 3);
    assert_eq!(chart_sum(&browser, "failed").await, 2);
    assert_eq!(chart_sum(&browser, "inProgress").await, 0);
    let buckets = browser
        .execute(
            "return document.querySelectorAll('#deliveries-chart g.bucket').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(buckets.as_u64(), Some(12), "an hour in 5-minute buckets");
    let p50 = browser
        .execute(
            "return Number(document.querySelector('#latency-chart [data-series=p50]').dataset.points);",
            vec![],
        )
        .await
        .unwrap();
    assert!(p50.as_u64().is_some_and(|n| n >= 1), "p50 points: {p50}");
    shot_of(&browser, "#health", "webhook-health").await;
    // Live: another delivery is drawn without a reload.
    post_for_storefront(&stack, "ok").await;
    eventually(WAIT, "the open page to draw the sixth delivery", || async {
        // Read in one step: the section is replaced while it is redrawn.
        let count = browser
            .execute(
                "return document.getElementById('health-deliveries').textContent;",
                vec![],
            )
            .await
            .ok()?;
        (count.as_str() == Some("6")).then_some(())
    })
    .await;
    assert_eq!(chart_sum(&browser, "succeeded").await, 4);
    // Other windows are links, without script.
    click(&browser, "a[href$='window=week#health']").await;
    appears(&browser, "#health[data-window='week']").await;
    let week_buckets = browser
        .execute(
            "return document.querySelectorAll('#deliveries-chart g.bucket').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(week_buckets.as_u64(), Some(28));

    // The hub's list: the trend strip and the success rate (4 of 6), marked below 95%.
    let list = format!("{base}/ns/{}/hubs/main", stack.env.ns);
    let rate = eventually(WAIT, "the row's success rate", || async {
        browser.goto(&list).await.ok()?;
        let rate = text(&browser, "tr[data-webhook='storefront'] td.success-rate").await;
        rate.contains("67%").then_some(rate)
    })
    .await;
    assert!(rate.contains('⚠'), "an unhealthy webhook stands out: {rate}");
    let neighbour = eventually(WAIT, "the healthy row's success rate", || async {
        browser.goto(&list).await.ok()?;
        let rate = text(&browser, "tr[data-webhook='search-index'] td.success-rate").await;
        rate.contains("100%").then_some(rate)
    })
    .await;
    assert!(!neighbour.contains('⚠'), "{neighbour}");
    let bars = browser
        .execute(
            "return document.querySelectorAll(\"tr[data-webhook='storefront'] svg.trend > rect\").length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(bars.as_u64(), Some(6), "one bar per recent delivery");
    shot(&browser, "webhooks-health").await;
    browser.close().await.unwrap();
    stack.cleanup().await;
}

#[tokio::test]
async fn a_viewer_sees_no_edit_controls_and_a_clear_refusal() {
    let stack = Stack::start("console_viewer").await;
    let receiver = Receiver::start().await;
    stack
        .webhook("shop", support::stack::spec(receiver.url("/shop"), &[UPDATED]))
        .await;
    // The chart's aggregated roles, bound to the restricted user as viewer.
    let roles = std::process::Command::new(tool("helm"))
        .args([
            "template",
            "r",
            "charts/hookrelay",
            "--show-only",
            "templates/aggregated-roles.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("helm");
    assert!(roles.status.success(), "{}", String::from_utf8_lossy(&roles.stderr));
    for doc in serde_yaml::Deserializer::from_slice(&roles.stdout) {
        let role: k8s_openapi::api::rbac::v1::ClusterRole = serde::Deserialize::deserialize(doc).unwrap();
        let name = role.metadata.name.clone().unwrap();
        Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(stack.env.client.clone())
            .patch(
                &name,
                &PatchParams::apply("hookrelay-tests").force(),
                &Patch::Apply(&role),
            )
            .await
            .unwrap();
    }
    bind_viewer(
        &stack.env,
        "viewer",
        json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": support::RESTRICTED_USER }),
    )
    .await;
    let restricted = stack.env.cluster.restricted_kubeconfig();
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    let (_console, login) = stack
        .env
        .start_console(&restricted, "viewer", &["--ingest-url", &stack.ingest.url])
        .await;
    browser.goto(&login).await.unwrap();
    appears(&browser, "a[href$='/hubs/main']").await;
    assert!(browser.source().await.unwrap().contains("read only"));
    click(&browser, "a[href$='/hubs/main']").await;
    appears(&browser, "tr[data-webhook='shop']").await;
    let list = browser.source().await.unwrap();
    assert!(
        !list.contains("Add webhook") && !list.contains("<summary"),
        "no edit controls for a viewer"
    );
    click(&browser, "tr[data-webhook='shop'] a").await;
    appears(&browser, "#webhook-form fieldset[disabled]").await;
    assert!(
        browser.find(Locator::Css("#save")).await.is_err(),
        "no Save for a viewer"
    );
    shot(&browser, "webhook-viewer").await;
    // A write attempted anyway (with a valid session and CSRF token).
    let refused = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.querySelector('input[name=csrf]').value;
             fetch(location.pathname + '/active', { method: 'POST', credentials: 'same-origin',
               body: new URLSearchParams({ csrf, active: 'false' }) })
               .then(async r => done([r.status, await r.text()]));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused[0].as_u64(), Some(403), "{refused}");
    assert!(
        refused[1].as_str().unwrap().contains("may not"),
        "a clear message: {refused}"
    );
    assert!(
        stack.env.api::<Webhook>().get("shop").await.unwrap().spec.active,
        "nothing changed"
    );

    // In a cluster users sign in with a bearer token: a ServiceAccount's,
    // bound to hookrelay-view. The console's own identity is not used.
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = stack.env.api();
    let account: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": "webhook-owner" } })).unwrap();
    accounts.create(&Default::default(), &account).await.unwrap();
    bind_viewer(
        &stack.env,
        "webhook-owner",
        json!({ "kind": "ServiceAccount", "name": "webhook-owner", "namespace": stack.env.ns }),
    )
    .await;
    let token = support::stack::service_account_token(&stack.env.client, &stack.env.ns, "webhook-owner").await;
    // The restricted kubeconfig supplies only the address and CA here.
    let (_token_console, login) = stack
        .env
        .start_console(&restricted, "token", &["--auth", "token"])
        .await;
    assert!(login.ends_with("/login"), "{login}");
    browser.delete_all_cookies().await.unwrap();
    browser.goto(&login).await.unwrap();
    fill(&browser, "#token", "not-a-token").await;
    click(&browser, "form button[type=submit]").await;
    appears(&browser, "p.error").await;
    assert!(text(&browser, "p.error").await.contains("does not accept"));
    fill(&browser, "#token", &token).await;
    click(&browser, "form button[type=submit]").await;
    appears(&browser, "a[href$='/hubs/main']").await;
    let page = browser.source().await.unwrap();
    assert!(
        page.contains(&format!("system:serviceaccount:{}:webhook-owner", stack.env.ns)),
        "signed in as the token's user"
    );
    assert!(page.contains("read only"));
    browser.close().await.unwrap();

    // Signing in from another site's form is refused (login CSRF); behind
    // a TLS-terminating proxy the cookie is Secure and __Host- bound.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |extra: &'static [(&'static str, &'static str)]| {
        let (http, login, token) = (http.clone(), login.clone(), token.clone());
        async move {
            let mut request = http.post(&login).form(&[("token", token.as_str())]);
            for (name, value) in extra {
                request = request.header(*name, *value);
            }
            request.send().await.unwrap()
        }
    };
    let forged = sign_in(&[("origin", "https://evil.example")]).await;
    assert_eq!(forged.status().as_u16(), 403);
    assert!(
        forged.headers().get("set-cookie").is_none(),
        "no session for a forged sign-in"
    );
    let proxied = sign_in(&[("x-forwarded-proto", "https")]).await;
    assert_eq!(proxied.status().as_u16(), 303);
    let cookie = proxied.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("__Host-hookrelay_session=") && cookie.contains("; Secure"),
        "{cookie}"
    );
    // Sign-ins are limited: each costs the API server a review.
    let answers = futures::future::join_all((0..40).map(|_| sign_in(&[]))).await;
    assert!(
        answers.iter().any(|a| a.status().as_u16() == 429),
        "40 sign-ins at once are not all taken"
    );
    stack.cleanup().await;
}
