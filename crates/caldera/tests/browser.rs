//! The dashboard driven in headless Chromium (Debian's `chromium` + `chromedriver`, over
//! WebDriver with `fantoccini`): a real master (HTTP and gRPC, scheduler running) serving a
//! fixture experiment with regressions; the test opens the home page, the experiment, filters by
//! category (the server-side form, then the script's as-you-type filter), opens a crate page and
//! sees both logs with the first new error marked; then, at 1366×768, 1920×1080 and a phone's
//! 390×844, checks that both logs are on the page within the viewport's width (side by side on
//! the wide screens, stacked on the phone) and the highlight is dark text on light yellow; opens
//! the log diff, the crate's history and the pull-request comment with its copy button.
//! Screenshots of each step are saved under `$CARGO_TARGET_DIR/browser-artifacts/` (the target
//! directory of the test binary), and their paths printed.
//!
//! Needs `scripts/ensure-chromium.sh` to have run; without Chromium it fails and says so, unless
//! `CALDERA_SKIP_BROWSER=1`. `CALDERA_CHROMIUM` and `CALDERA_CHROMEDRIVER` override the paths.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caldera_db::testing::TestDb;
use caldera_master::dashboard::fixture;
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // <target>/<profile>/deps/browser-<hash>
            std::env::current_exe()
                .ok()
                .and_then(|p| p.ancestors().nth(3).map(PathBuf::from))
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}

async fn shot(client: &fantoccini::Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

async fn wait_text(client: &fantoccini::Client, css: &str, want: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(e) = client.find(Locator::Css(css)).await
            && let Ok(text) = e.text().await
            && text.contains(want)
        {
            return text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "`{css}` never showed {want:?}; page: {}",
            client.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// At `w`×`h`: both logs of the crate page are displayed, inside the viewport's width, side by
/// side when wide and stacked when narrow, the page does not scroll sideways, and the first new
/// error is dark text on light yellow.
async fn logs_fit(client: &fantoccini::Client, url: &str, w: u32, h: u32, name: &str) {
    client.set_window_size(w, h).await.unwrap();
    client.goto(url).await.unwrap();
    wait_text(client, "h1", "root-a 1.0.0").await;
    let got = client
        .execute(
            r#"const rect = s => { const r = document.querySelector(s).getBoundingClientRect();
                 return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width}; };
               const mark = document.querySelector('mark#first-new-error');
               const inner = mark.querySelector('span') || mark;
               return {start: rect('#log-start pre.log'), end: rect('#log-end pre.log'),
                 viewport: document.documentElement.clientWidth,
                 scroll: document.documentElement.scrollWidth,
                 mark_bg: getComputedStyle(mark).backgroundColor,
                 mark_fg: getComputedStyle(inner).color};"#,
            vec![],
        )
        .await
        .unwrap();
    let num = |side: &str, k: &str| got[side][k].as_f64().unwrap();
    let viewport = got["viewport"].as_f64().unwrap();
    for side in ["start", "end"] {
        assert!(
            num(side, "left") >= 0.0 && num(side, "right") <= viewport + 0.5,
            "{name}: the {side} log is outside the viewport: {got}"
        );
        assert!(
            num(side, "width") > 150.0,
            "{name}: the {side} log is too narrow: {got}"
        );
        let log = client
            .find(Locator::Css(&format!("#log-{side} pre.log")))
            .await
            .unwrap();
        assert!(
            log.is_displayed().await.unwrap(),
            "{name}: {side} log hidden"
        );
    }
    assert!(
        got["scroll"].as_f64().unwrap() <= viewport + 0.5,
        "{name}: the page scrolls sideways: {got}"
    );
    if w >= 1280 {
        assert_eq!(
            num("start", "top"),
            num("end", "top"),
            "{name}: side by side: {got}"
        );
        assert!(num("start", "right") <= num("end", "left"), "{name}: {got}");
    } else {
        assert!(
            num("end", "top") >= num("start", "bottom"),
            "{name}: stacked: {got}"
        );
    }
    assert_eq!(got["mark_bg"], "rgb(255, 241, 168)", "{name}: {got}");
    assert_eq!(got["mark_fg"], "rgb(27, 31, 36)", "{name}: {got}");
    client
        .execute("document.getElementById('logs').scrollIntoView();", vec![])
        .await
        .unwrap();
    shot(client, &format!("05-crate-{name}.png")).await;
}

#[tokio::test]
async fn dashboard_in_headless_chromium() {
    if std::env::var("CALDERA_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("CALDERA_SKIP_BROWSER=1: the browser test is skipped");
        return;
    }
    let chromium = std::env::var("CALDERA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let driver =
        std::env::var("CALDERA_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    for bin in [&chromium, &driver] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} not found: the dashboard browser test needs Debian's chromium and chromedriver; \
             run scripts/ensure-chromium.sh (or set CALDERA_SKIP_BROWSER=1 to skip this test)"
        );
    }

    // A real master with the fixture experiment.
    let db = TestDb::new().await;
    let store_dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn caldera_storage::ObjectStore> =
        Arc::new(caldera_storage::LocalStore::open(store_dir.path(), 64 << 20).unwrap());
    fixture::create(&db.pool, &store, "beta-fx").await;
    let master =
        caldera_master::Master::start(caldera_master::MasterConfig::new(db.pool.clone(), store))
            .await
            .unwrap();
    let base = master.http_url();

    // chromedriver on a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut chromedriver = tokio::process::Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let webdriver = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    while reqwest::get(format!("{webdriver}/status")).await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "chromedriver did not answer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("a WebDriver session in Chromium");

    // Home: the experiment with its status and progress.
    client.goto(&format!("{base}/")).await.unwrap();
    let row = wait_text(&client, "#experiments tbody tr", "beta-fx").await;
    assert!(row.contains("completed") && row.contains("9 / 9"), "{row}");
    assert_eq!(client.title().await.unwrap(), "Experiments — caldera");
    shot(&client, "01-home.png").await;

    // The experiment, reached by its link.
    client
        .find(Locator::LinkText("beta-fx"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let headline = wait_text(&client, "p.headline", "regressions").await;
    assert_eq!(headline, "5 regressions, 3 of them through root-a 1.0.0.");
    let roots = client
        .find(Locator::Css("ol.roots"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(roots.starts_with("root-a 1.0.0"), "{roots}");
    shot(&client, "02-experiment.png").await;

    // Filter by category with the form (works without JavaScript).
    client
        .find(Locator::Css("select[name=category]"))
        .await
        .unwrap()
        .select_by_value("regressed")
        .await
        .unwrap();
    client
        .find(Locator::Css("form.filters button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, "h2#results", "5 matching crates").await;
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .as_str()
            .contains("category=regressed")
    );
    let rows = client
        .find_all(Locator::Css("#crates tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    // The script's as-you-type filter narrows the rows shown.
    let quick = client
        .find(Locator::Css("input[data-filter-rows=crates]"))
        .await
        .unwrap();
    assert!(
        quick.is_displayed().await.unwrap(),
        "the script shows its filter box"
    );
    quick.send_keys("dep-").await.unwrap();
    let t0 = Instant::now();
    loop {
        let mut shown = 0;
        for r in client
            .find_all(Locator::Css("#crates tbody tr"))
            .await
            .unwrap()
        {
            if r.is_displayed().await.unwrap() {
                shown += 1;
            }
        }
        if shown == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{shown} rows shown after typing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shot(&client, "03-filtered.png").await;

    // A crate: both runs and both logs, the new error marked.
    client
        .find(Locator::LinkText("dep-b 2.0.0"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, "h1", "dep-b 2.0.0").await;
    client
        .find(Locator::LinkText("root-a 1.0.0"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, "h1", "root-a 1.0.0").await;
    let runs = client
        .find(Locator::Css("#runs"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        runs.contains("test-pass") && runs.contains("build-fail:compiler-error(E0308)"),
        "{runs}"
    );
    assert!(runs.contains("peak memory"), "{runs}");
    let start_log = client
        .find(Locator::Css("#log-start pre.log"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let end_log = client
        .find(Locator::Css("#log-end pre.log"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(start_log.contains("test result: ok"), "{start_log}");
    assert!(end_log.contains("mismatched types"), "{end_log}");
    assert!(
        !end_log.contains('\x1b'),
        "colours are rendered, not printed"
    );
    let mark = client
        .find(Locator::Css("mark#first-new-error"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(mark, fixture::NEW_ERROR);
    shot(&client, "04-crate.png").await;
    let crate_url = client.current_url().await.unwrap();
    for (w, h, name) in [
        (1366, 768, "1366x768"),
        (1920, 1080, "1920x1080"),
        (390, 844, "phone-390x844"),
    ] {
        logs_fit(&client, crate_url.as_str(), w, h, name).await;
    }
    client.set_window_size(1400, 1000).await.unwrap();

    // The log diff: the first divergent section has the new error as an added line.
    client.goto(crate_url.as_str()).await.unwrap();
    client
        .find(Locator::Css("a#diff-link"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&client, "h1", "What changed").await;
    let first = client
        .find(Locator::Css("#section-1 + .diff-wrap"))
        .await
        .unwrap();
    let added = first
        .find(Locator::Css("tr.add"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(added.contains(fixture::NEW_ERROR), "{added}");
    for changed in client
        .find_all(Locator::Css("tr.add, tr.del"))
        .await
        .unwrap()
    {
        let text = changed.text().await.unwrap();
        assert!(
            !text.contains("Compiling"),
            "paths are no difference: {text}"
        );
    }
    shot(&client, "08-diff.png").await;

    // The pull-request comment: the static script shows the copy button.
    client
        .goto(&format!("{base}/experiments/beta-fx/pr-comment"))
        .await
        .unwrap();
    let copy = client
        .find(Locator::Css("button[data-copy=pr-comment]"))
        .await
        .unwrap();
    let t0 = Instant::now();
    while !copy.is_displayed().await.unwrap() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no copy button");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let md = client
        .find(Locator::Css("textarea#pr-comment"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(md.contains("#### Regressions by root cause"), "{md}");
    copy.click().await.unwrap();
    wait_text(&client, "[data-copy-status]", "Copied.").await;
    shot(&client, "09-pr-comment.png").await;

    client.close().await.unwrap();
    let _ = chromedriver.kill().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), master.stop()).await;
}
