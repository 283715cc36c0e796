//! `kubectl hookrelay` against the real control plane with controller and
//! ingest running: a hub, two webhooks, a handler that fails some events.
//! Each command's output is asserted on what the scenario makes true.

mod support;

use hookrelay::delivery::signing;
use hookrelay::resources::delivery::Phase;
use hookrelay::resources::{Delivery, RetryPolicy};
use kube::api::ListParams;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::receiver::{Receiver, Reply};
use support::stack::{Stack, WAIT, deliveries_of, spec};
use support::{eventually, tool};

const UPDATED: &str = "dynamic-content.content-item.updated";

/// A directory holding the binary as `kubectl-hookrelay`, as a user installs it.
fn plugin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-bin");
    std::fs::create_dir_all(&dir).unwrap();
    // And as `kubectl_complete-hookrelay`, which kubectl runs for completion.
    for name in ["kubectl-hookrelay", "kubectl_complete-hookrelay"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hookrelay"), &link).unwrap();
    }
    dir
}

struct Plugin {
    bin: PathBuf,
    kubeconfig: PathBuf,
    ns: String,
}

impl Plugin {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--kubeconfig", self.kubeconfig.to_str().unwrap(), "-n", &self.ns])
            .args(args)
            .env("NO_COLOR", "1");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl-hookrelay")
    }

    /// Runs and expects success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects one clear line on stderr and a non-zero exit.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        err
    }
}

// Multi-threaded: the plugin runs as a blocking child process while the
// receiver (on this runtime) answers the requests it causes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_kubectl_plugin_shows_replays_tests_and_follows_deliveries() {
    let stack = Stack::start("kubectl_plugin").await;
    let receiver = Receiver::start().await;
    // With a terminal escape (clear the screen, set the title) a handler
    // could use to rewrite what the plugin shows.
    receiver.set_default(
        "/search",
        Reply::status(500).body("index is read-only\x1b[2J\x1b]0;pwned\x07"),
    );
    stack.webhook("shop", spec(receiver.url("/shop"), &[UPDATED])).await;
    let mut search = spec(receiver.url("/search"), &["dynamic-content.snapshot.published"]);
    search.retry = Some(RetryPolicy {
        max_retries: Some(0),
        window: None,
    });
    stack.webhook("search", search).await;
    let dir = plugin_dir();
    let plugin = Plugin {
        bin: dir.join("kubectl-hookrelay"),
        kubeconfig: stack.env.cluster.admin_kubeconfig.clone(),
        ns: stack.env.ns.clone(),
    };

    // Three content items to the shop; a snapshot the search handler fails.
    let mut shop_deliveries = vec![];
    for item in ["c-1", "c-2", "c-3"] {
        let (status, answer) = stack
            .post(json!({ "id": format!("evt-{item}"), "name": UPDATED, "payload": { "id": item } }))
            .await;
        assert_eq!(status, 202, "{answer}");
        shop_deliveries.extend(deliveries_of(&answer));
    }
    let (status, answer) = stack
        .post(json!({ "id": "evt-snap", "name": "dynamic-content.snapshot.published", "payload": { "id": "s-1" } }))
        .await;
    assert_eq!(status, 202);
    let failed = deliveries_of(&answer).remove(0);
    for name in shop_deliveries.iter().chain([&failed]) {
        stack.delivery_done(name).await;
    }

    // deliveries --outcome failed lists exactly the failed one.
    let out = plugin.ok(&["deliveries", "--outcome", "failed"]);
    let listed: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, vec![failed.as_str()], "{out}");
    assert!(out.lines().next().unwrap().starts_with("DELIVERY"));
    // -o name, for scripts: kubectl reads what it names.
    let named = plugin.ok(&["deliveries", "--outcome", "failed", "-o", "name"]);
    assert_eq!(named.trim(), format!("delivery/{failed}"));
    let got = Command::new(tool("kubectl"))
        .args([
            "--kubeconfig",
            plugin.kubeconfig.to_str().unwrap(),
            "-n",
            &plugin.ns,
            "get",
            named.trim(),
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&got.stdout).contains(failed.as_str()),
        "{got:?}"
    );
    let out = plugin.ok(&["deliveries", "shop", "-o", "json"]);
    let rows: Vec<Value> = serde_json::from_str(&out).expect("-o json parses");
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r["outcome"] == "Succeeded" && r["statusCode"] == 200)
    );
    let out = plugin.ok(&["deliveries", "--content-item", "c-2", "-o", "wide"]);
    assert_eq!(out.lines().count(), 2, "one delivery of c-2: {out}");
    assert!(out.contains("c-2"));

    // status: hubs and webhooks at a glance.
    let out = plugin.ok(&["status"]);
    assert!(out.contains("Hub main") && out.contains("/hubs/main/events"), "{out}");
    let search_line = out
        .lines()
        .find(|l| l.starts_with("search"))
        .expect("the search webhook");
    assert!(
        search_line.contains("false") && search_line.contains("500"),
        "deactivated, last 500: {search_line}"
    );
    let status: Value = serde_json::from_str(&plugin.ok(&["status", "-o", "json"])).unwrap();
    let webhooks = status["hubs"][0]["webhooks"].as_array().unwrap();
    let search = webhooks.iter().find(|w| w["webhook"] == "search").unwrap();
    assert_eq!(search["failuresLastHour"], 1);

    // show: the seed's View details.
    let out = plugin.ok(&["show", &failed]);
    assert!(
        out.contains("Attempt 1") && out.contains("X-Amplience-Webhook-Signature"),
        "{out}"
    );
    assert!(out.contains("← 500") && out.contains("index is read-only"), "{out}");
    assert!(
        out.contains(r"read-only\x1b[2J\x1b]0;pwned\x07") && !out.contains('\x1b'),
        "control characters from the handler are printed escaped: {out:?}"
    );
    assert!(out.contains("\"id\": \"s-1\""), "the body as sent: {out}");
    let deliveries: kube::Api<hookrelay::resources::Delivery> = stack.env.api();
    let trace = deliveries.get(&failed).await.unwrap().spec.event.trace.unwrap();
    assert!(
        out.contains(&format!("trace     {}", trace.trace_id())),
        "the event's trace id: {out}"
    );

    // redeliver --content-item: exactly c-2's delivery, checked at the handler.
    let c2 = rows.iter().find(|r| r["contentItem"] == "c-2").unwrap()["delivery"]
        .as_str()
        .unwrap()
        .to_string();
    let out = plugin.ok(&["redeliver", "--content-item", "c-2", "--dry-run"]);
    assert!(
        out.starts_with("1 deliveries to redeliver") && out.contains(&c2),
        "{out}"
    );
    let before = receiver.received("/shop").len();
    plugin.ok(&["redeliver", "--content-item", "c-2", "--yes"]);
    receiver.wait_for("/shop", before + 1, WAIT).await;
    let api = stack.env.api::<Delivery>();
    eventually(WAIT, "c-2 redelivered", || async {
        (api.get(&c2).await.ok()?.status?.attempt_count == 2).then_some(())
    })
    .await;
    let again: Vec<String> = receiver.received("/shop")[before..]
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(again, vec![c2.clone()], "only c-2's delivery went again");
    // Without --yes and without a terminal nothing changes.
    let err = plugin.refused(&["redeliver", "--content-item", "c-1"]);
    assert!(err.contains("--yes"), "{err}");

    // pause / resume: the webhook's spec, shown by status.
    let out = plugin.ok(&["pause", "shop"]);
    assert!(out.contains("paused"), "{out}");
    let webhooks = stack.env.api::<hookrelay::resources::Webhook>();
    assert!(webhooks.get("shop").await.unwrap().spec.paused);
    let out = plugin.ok(&["status"]);
    assert!(
        out.lines().any(|l| l.starts_with("shop") && l.contains("paused")),
        "{out}"
    );
    plugin.ok(&["resume", "shop"]);
    assert!(!webhooks.get("shop").await.unwrap().spec.paused);
    // -o wide adds each webhook's signing scheme and rate limit.
    let out = plugin.ok(&["status", "-o", "wide"]);
    assert!(out.contains("SIGNING") && out.contains("RATE LIMIT"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("shop") && l.contains("symmetric")),
        "{out}"
    );
    // A symmetric webhook has no public key; the refusal says how to get one.
    let err = plugin.refused(&["secret", "shop", "--public-key"]);
    assert!(err.contains("symmetric"), "{err}");

    // test: the handler's status.
    let out = plugin.ok(&["test", "shop"]);
    assert!(out.contains(": 200 in"), "{out}");
    // The failing handler's webhook was deactivated: nothing is sent.
    let err = plugin.refused(&["test", "search"]);
    assert!(err.contains("inactive"), "{err}");

    // secret --rotate: a new value, and the old one still verifies meanwhile.
    let old = plugin.ok(&["secret", "shop"]).trim().to_string();
    assert_eq!(old.len(), 128);
    let out = plugin.ok(&["secret", "shop", "--rotate"]);
    assert!(out.contains("previous secret also signs until"), "{out}");
    let new = plugin.ok(&["secret", "shop"]).trim().to_string();
    assert_ne!(new, old);

    // A secret that is not base64: the whsec_ value the plugin prints is
    // what a Standard Webhooks library verifies the requests with.
    let own = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("own-secret.txt");
    std::fs::write(&own, "my-own-secret-value!").unwrap();
    plugin.ok(&["secret", "shop", "--set", own.to_str().unwrap()]);
    let whsec = plugin.ok(&["secret", "shop", "--standard-webhooks"]).trim().to_string();
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode("my-own-secret-value!");
    assert_eq!(whsec, format!("whsec_{expected}"));
    let library = standardwebhooks::Webhook::new(&whsec).expect("a whsec_ value the library takes");
    // (The controller signs with the new value once its Secret watch has
    // seen it: an event sent in the moment before is signed with the old.)
    let mut n = 0;
    eventually(WAIT, "a request the published value verifies", || {
        n += 1;
        let (stack, receiver, library) = (&stack, &receiver, &library);
        async move {
            let before = receiver.received("/shop").len();
            let id = format!("evt-own-secret-{n}");
            let (status, _) = stack
                .post(json!({ "id": id, "name": UPDATED, "payload": { "id": "c-8" } }))
                .await;
            assert_eq!(status, 202);
            let got = receiver.wait_for("/shop", before + 1, WAIT).await;
            got.iter()
                .filter(|r| r.json()["payload"]["id"] == "c-8")
                .any(|r| library.verify(&r.body, &r.headers).is_ok())
                .then_some(())
        }
    })
    .await;

    // tail prints an attempt that happens while it runs.
    let mut tail = plugin
        .command(&["tail", "shop"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    for pipe in [
        Box::new(tail.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(tail.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    // It has read what exists before anything new is sent.
    eventually(WAIT, "tail to start following", || async {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("following attempts"))
            .then_some(())
    })
    .await;
    let (_, answer) = stack
        .post(json!({ "id": "evt-tail", "name": UPDATED, "payload": { "id": "c-9" } }))
        .await;
    let tailed = deliveries_of(&answer).remove(0);
    let line = eventually(WAIT, "tail to print the attempt", || async {
        lines.lock().unwrap().iter().find(|l| l.contains(&tailed)).cloned()
    })
    .await;
    assert!(line.contains("#1") && line.contains("200"), "{line}");
    let _ = tail.kill();
    let _ = tail.wait();
    // The rotated request carried both signatures: the old secret verifies.
    let request = receiver
        .received("/shop")
        .into_iter()
        .find(|r| r.header("webhook-id") == Some(tailed.as_str()))
        .unwrap();
    let timestamp: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
    let with_old = signing::standard_signature(&old, &tailed, timestamp, &request.body);
    assert!(
        request
            .header("webhook-signature")
            .unwrap()
            .split(' ')
            .any(|s| s == with_old),
        "during the overlap the old secret still verifies"
    );

    // Bad input: one clear line, non-zero, nothing changed.
    // Argument errors come whole: what is wrong (and the usage, where an
    // argument is missing) and the hint.
    for (args, says) in [
        (&["deliveries", "--since", "2x"][..], &["--since", "30s", "--help"][..]),
        (
            &["show"][..],
            &["<DELIVERY>", "Usage: kubectl hookrelay show <DELIVERY>", "--help"][..],
        ),
    ] {
        let out = plugin.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(says.iter().all(|s| err.contains(s)), "{args:?}: {err}");
    }
    assert!(
        plugin
            .refused(&["show", "no-such-delivery"])
            .contains("no such delivery")
    );
    assert!(plugin.refused(&["deliveries", "nope"]).contains("no such webhook"));
    assert!(plugin.refused(&["redeliver"]).contains("--webhook"));

    // Through kubectl itself: the plugin is found on PATH by its name.
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    // (kubectl takes no flags before a plugin's name: the kubeconfig comes
    // from KUBECONFIG, as for any plugin.)
    let out = Command::new(tool("kubectl"))
        .args(["hookrelay", "-n", &stack.env.ns, "status"])
        .env("KUBECONFIG", &stack.env.cluster.admin_kubeconfig)
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hub main"));

    // `kubectl hookrelay <TAB>`: kubectl's own completion asks the plugin's
    // completer, which offers the subcommands and, for a webhook, the
    // namespace's webhooks as the user may list them.
    let complete = |words: &[&str]| {
        let out = Command::new(tool("kubectl"))
            .arg("__complete")
            .args(words)
            .env("KUBECONFIG", &stack.env.cluster.admin_kubeconfig)
            .env(
                "PATH",
                format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let subcommands = complete(&["hookrelay", ""]);
    assert!(
        subcommands.contains("deliveries\t") && subcommands.contains("redeliver\t"),
        "{subcommands}"
    );
    let webhooks = complete(&["hookrelay", "-n", &stack.env.ns, "test", ""]);
    let names: Vec<&str> = webhooks.lines().collect();
    assert!(names.contains(&"shop") && names.contains(&"search"), "{webhooks}");
    assert_eq!(names.last(), Some(&":4"), "{webhooks}");

    let finished = api.list(&ListParams::default()).await.unwrap();
    assert!(
        finished
            .items
            .iter()
            .any(|d| d.status.as_ref().is_some_and(|s| s.phase == Phase::Failed))
    );
    stack.cleanup().await;
}
