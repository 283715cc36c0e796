//! A real browser for tests: headless Chromium driven through WebDriver
//! (chromedriver, Debian's chromium-driver), and the few page actions the
//! console tests use. Screenshots go to `target/console-screenshots/`.

use super::eventually;
use super::stack::WAIT;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// chromedriver on a free loopback port, in a process group of its own:
/// when dropped, the group (chromedriver and the Chromium it started) is
/// stopped, so a test that fails before closing its browser leaves none.
pub struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    pub async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (Debian: chromium-driver; .ci/run installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(30), "chromedriver to answer", || async {
            http.get(format!("{url}/status"))
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await;
        Driver { child, url }
    }

    pub async fn browser(&self) -> Browser {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1100"] }),
        );
        // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a headless Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (process_group(0)).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn shot(browser: &Browser, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// A screenshot with the element `css` scrolled to the top of the window.
pub async fn shot_of(browser: &Browser, css: &str, name: &str) {
    browser
        .execute(&format!("document.querySelector({css:?}).scrollIntoView();"), vec![])
        .await
        .unwrap();
    shot(browser, name).await;
}

pub async fn text(browser: &Browser, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

pub async fn click(browser: &Browser, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

pub async fn fill(browser: &Browser, css: &str, value: &str) {
    let field = browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

/// Waits until the page has an element matching `css`, without reloading.
pub async fn appears(browser: &Browser, css: &str) {
    eventually(WAIT, &format!("{css} on the page"), || async {
        browser.find(Locator::Css(css)).await.ok().map(drop)
    })
    .await;
}
