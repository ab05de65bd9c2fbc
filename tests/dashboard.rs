//! The dashboard (README "Dashboard") in a real browser: headless Chromium
//! driven through chromedriver, against a real `bgsched run`. Skipped,
//! saying why, only where Chromium or chromedriver is not installed
//! (`scripts/test` installs Debian's `chromium` and `chromium-driver`).
//!
//! With `BGSCHED_SCREENSHOTS=<dir>` the screenshots README shows are
//! written there (`docs/screenshots/`).

mod common;

use common::etcd::Etcd;
use common::*;
use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One browser at a time on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

const READ: &str = "read-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium is chromedriver's child in its process group: killing
        // chromedriver alone would leave the browser running.
        if let Some(group) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A headless Chromium, or `None` (with the reason printed) where it is
/// not installed.
async fn browser() -> Option<Browser> {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        if !std::path::Path::new(bin).exists() {
            eprintln!("SKIPPED: {bin} is not installed (Debian: apt-get install chromium chromium-driver)");
            return None;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let deadline = Instant::now() + PATIENCE;
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no browser session through chromedriver: {e}"),
        }
    };
    Some(Browser {
        client,
        driver,
        _profile: profile,
    })
}

impl Browser {
    async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The text of the first element matching `css`, if there is one.
    async fn text(&self, css: &str) -> Option<String> {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await
            .expect("script");
        v.as_str().map(str::to_string)
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .execute(
                "return document.querySelectorAll(arguments[0]).length;",
                vec![json!(css)],
            )
            .await
            .expect("script")
            .as_u64()
            .unwrap_or(0) as usize
    }

    /// Waits until the element `css` exists and its text contains `needle`.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text(css).await;
            if let Some(t) = text.as_ref().filter(|t| t.contains(needle)) {
                return t.clone();
            }
            if Instant::now() > deadline {
                let body = self.text("body").await.unwrap_or_default();
                panic!("timed out waiting for {needle:?} in {css} (it has {text:?}); the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_count(&self, css: &str, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.count(css).await != n {
            if Instant::now() > deadline {
                let body = self.text("body").await.unwrap_or_default();
                panic!(
                    "timed out waiting for {n} of {css} (there are {}); the page says:\n{body}",
                    self.count(css).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn use_token(&self, token: &str) {
        self.type_into("#token", token).await;
        self.click("#token-use").await;
    }

    /// Whether `css` is a disabled control, and the reason shown beside it.
    async fn disabled(&self, css: &str) -> (bool, String) {
        let v = self
            .client
            .execute(
                "const e = document.querySelector(arguments[0]); \
                 return e ? [e.disabled, e.title] : null;",
                vec![json!(css)],
            )
            .await
            .expect("script");
        (
            v[0].as_bool().unwrap_or(false),
            v[1].as_str().unwrap_or_default().to_string(),
        )
    }

    async fn js(&self, script: &str) -> serde_json::Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    /// Waits until `script` returns true.
    async fn wait_js(&self, what: &str, script: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.js(script).await != json!(true) {
            if Instant::now() > deadline {
                let body = self.text("body").await.unwrap_or_default();
                panic!("timed out waiting for {what}; the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether, on a phone-sized screen, nothing sticks out sideways.
    async fn fits_a_phone(&self) -> bool {
        self.client.set_window_size(420, 900).await.unwrap();
        let fits = self
            .js("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
            .await;
        self.client.set_window_size(1280, 900).await.unwrap();
        fits == json!(true)
    }

    async fn hash(&self) -> String {
        self.client
            .current_url()
            .await
            .unwrap()
            .fragment()
            .unwrap_or_default()
            .to_string()
    }

    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("BGSCHED_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

/// The test jobs. Their schedules are picked half a day (nightly) and half
/// an hour (order) away from now: a scheduled fire in the middle of a test
/// would make the test's own trigger of the job `skipped` (`overlap =
/// "skip"`), as it once did in CI at 04:10 with `*/5`.
fn jobs(now: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::Timelike;
    let order_minute = (now.minute() + 30) % 60;
    format!(
        r#"[jobs.order]
description = "Ships one order"
schedule = "{order_minute} * * * *"
shell = 'for i in 1 2 3 4 5 6; do echo "step $i of order $BGSCHED_PARAM_ORDER_ID"; sleep 0.6; done'
[jobs.order.params]
order_id = {{ required = true, pattern = "[0-9]+" }}

[jobs.long]
description = "Runs until it is cancelled"
schedule = "@yearly"
shell = 'echo started; sleep 600'

[jobs.nightly]
description = "Nightly backup"
schedule = "{NIGHTLY}"
timezone = "UTC"
shell = 'echo backed up'
"#,
        NIGHTLY = nightly(now.hour())
    )
}

/// `nightly`'s schedule: 02:30 UTC unless the test runs within hours of it.
fn nightly(hour: u32) -> &'static str {
    if (1..=3).contains(&hour) {
        "30 14 * * *"
    } else {
        "30 2 * * *"
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_lists_jobs_triggers_follows_cancels_and_pauses() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    let now = chrono::Utc::now();
    let env = Env::new().config(&format!(
        "[http]\ntokens_file = \"tokens\"\n\n{}",
        jobs(now)
    ));
    env.write("tokens", &format!("{READ} read\n{ADMIN} admin\n"));
    let run = env.spawn_run_with("dash", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    wait_ready(port);
    env.cmd(&["trigger", "nightly"]).run().success();
    let base = format!("http://127.0.0.1:{port}/");

    // Reading needs a token here: the page asks before showing jobs.
    b.open(&base).await;
    b.wait_text(".signin h1", "A token is needed").await;
    assert_eq!(b.count("#jobs tbody tr").await, 0);

    b.use_token(READ).await;
    b.wait_count("#jobs tbody tr", 3).await;
    for job in ["order", "long", "nightly"] {
        let row = format!("#jobs tr[data-job=\"{job}\"]");
        let next = b.text(&format!("{row} td.next")).await.unwrap();
        assert!(next.contains("(in "), "{job}'s next run: {next:?}");
        // Local time as `2026-12-02 14:05:09`, the instant itself on hover.
        let local = next.get(..19).unwrap_or_default();
        assert!(
            chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{job}'s next run: {next:?}"
        );
        let title = b
            .js(&format!(
                "return document.querySelector('{} td.next time').title;",
                row.replace('\'', "\\'")
            ))
            .await;
        assert!(
            chrono::DateTime::parse_from_rfc3339(title.as_str().unwrap_or_default()).is_ok(),
            "{job}'s next run on hover: {title}"
        );
    }
    let nightly_at = nightly(chrono::Timelike::hour(&now));
    let nightly = b.text("#jobs tr[data-job=\"nightly\"]").await.unwrap();
    assert!(
        nightly.contains("Nightly backup") && nightly.contains(nightly_at),
        "{nightly}"
    );
    assert!(nightly.contains("success"), "its last run: {nightly}");
    b.wait_text("#scope", "scope: read").await;

    // A read token: actions are there but disabled, saying why.
    b.open(&format!("{base}#/jobs/order")).await;
    b.wait_text("h1", "order").await;
    let (disabled, why) = b.disabled("#trigger").await;
    assert!(disabled, "trigger is enabled with a read token");
    assert!(why.contains("needs a token of scope trigger"), "{why}");
    assert!(b.disabled("#pause").await.0);
    assert!(b.disabled("input[data-param=\"order_id\"]").await.0);
    assert!(b.disabled("#pause-until").await.0);

    // An admin token: trigger with a parameter, and watch it live.
    b.use_token(ADMIN).await;
    b.wait_text("#scope", "scope: admin").await;
    b.open(&format!("{base}#/jobs/order")).await;
    b.wait_text("h1", "order").await;
    b.wait_count("#next-runs li", 5).await;
    b.wait_text("#job-config", "step $i of order").await;
    b.type_into("input[data-param=\"order_id\"]", "42").await;
    b.click("#trigger").await;
    b.wait_text("#output", "step 1 of order 42").await;
    assert_eq!(b.text("#live").await.as_deref(), Some("(live)"));
    let partial = b.text("#output").await.unwrap();
    assert!(
        !partial.contains("step 6"),
        "not live: the whole output came at once: {partial}"
    );
    b.screenshot("run-live.png").await;
    b.wait_text("#run-outcome", "success").await;
    b.wait_text("#output", "step 6 of order 42").await;
    let hash = b.hash().await;
    let run_id = hash.trim_start_matches("/runs/").to_string();
    let rec = env
        .records("order")
        .into_iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no record of {run_id} ({hash})"));
    assert_eq!(rec["params"], json!({"order_id": "42"}));
    assert_eq!(rec["trigger"], "manual");

    // Cancel from the run page.
    b.open(&format!("{base}#/jobs/long")).await;
    b.wait_text("h1", "long").await;
    b.click("#trigger").await;
    b.wait_text("#output", "started").await;
    b.click("#cancel").await;
    b.wait_text("#run-outcome", "cancelled").await;
    wait_until(PATIENCE, "the cancel recorded", || {
        env.records("long")
            .first()
            .is_some_and(|r| r["outcome"] == "cancelled")
    });

    // A run at a later time is cancelled from its page before its time.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let later = env.cmd(&["trigger", "long", "--at", &at]).run().success();
    let later = later.stdout.trim().to_string();
    b.open(&format!("{base}#/runs/{later}")).await;
    b.wait_text("#run-outcome", "scheduled").await;
    b.click("#cancel").await;
    b.wait_text("#run-outcome", "cancelled").await;
    let rec = env
        .records("long")
        .into_iter()
        .find(|r| r["run_id"] == later.as_str())
        .unwrap_or_else(|| panic!("no record of {later}"));
    assert!(
        rec["reason"]
            .as_str()
            .is_some_and(|why| why.contains("before its time") && why.ends_with("not started")),
        "{rec}"
    );

    // Pause and resume from the job page.
    b.open(&format!("{base}#/jobs/nightly")).await;
    b.wait_text("h1", "nightly").await;
    b.click("#pause").await;
    b.wait_text("#job-state", "paused").await;
    assert_eq!(env.job_view("nightly")["state"], "paused");
    b.screenshot("job.png").await;
    b.click("#resume").await;
    b.wait_text("#job-state", "idle").await;
    assert_eq!(env.job_view("nightly")["state"], "idle");

    b.open(&base).await;
    b.wait_count("#jobs tbody tr", 3).await;
    b.screenshot("overview.png").await;
}

const LIVELY: &str = r#"[jobs.ticker]
schedule = "@yearly"
shell = 'for i in $(seq 1 60); do echo "tick $i"; sleep 0.4; done'

[jobs.report]
schedule = "@yearly"
shell = 'echo "report for $BGSCHED_PARAM_REGION $BGSCHED_PARAM_YEAR"'
[jobs.report.params]
region = { required = true }
year = { default = "2026" }
"#;

/// The number of the last `tick N` line in `text`.
fn last_tick(text: &str) -> u32 {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_keep_up_say_what_is_not_there_and_outlive_a_scheduler_restart() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    let env = Env::new().config(&format!("[http]\ntokens_file = \"tokens\"\n\n{LIVELY}"));
    env.write("tokens", &format!("{ADMIN} admin\n"));
    // A port of its own, so the page keeps its address across restarts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut run = env.spawn_run_with("dash", &["--http", &listen]);
    wait_ready(port);
    let base = format!("http://127.0.0.1:{port}/");
    b.open(&base).await;
    b.use_token(ADMIN).await;
    b.wait_count("#jobs tbody tr", 2).await;

    // Links to what is not there say so, instead of loading forever.
    for (hash, title, says) in [
        ("#/jobs/nope", "No such job", "nope"),
        ("#/jobs/%E0%A4%A", "No such job", "is not a job name"),
        (
            "#/runs/0190c5a8-0000-7000-8000-000000000001",
            "No such run",
            "0190c5a8",
        ),
        ("#/runs/xyz", "No such run", "is not a run id"),
        ("#/elsewhere", "No such page", "#/elsewhere"),
    ] {
        b.open(&format!("{base}{hash}")).await;
        b.wait_text(".notfound h1", title).await;
        b.wait_text(".notfound", says).await;
    }

    // The overview's redraw keeps a focused job link focused.
    b.open(&base).await;
    b.wait_count("#jobs tbody tr", 2).await;
    b.js("document.querySelector('#jobs').dataset.old = '1'; \
          document.querySelector('#jobs a[href=\"#/jobs/report\"]').focus(); return true;")
        .await;
    b.wait_js(
        "a redraw of the table",
        "return !document.querySelector('#jobs[data-old]');",
    )
    .await;
    assert_eq!(
        b.js("return document.activeElement.getAttribute('href');")
            .await,
        json!("#/jobs/report"),
        "focus left the job link"
    );

    // A job page shows runs that start while it is open.
    b.open(&format!("{base}#/jobs/report")).await;
    b.wait_text("#no-runs", "No runs yet").await;
    env.cmd(&["trigger", "report", "-p", "region=eu"])
        .run()
        .success();
    b.wait_count("#history tbody tr", 1).await;
    b.wait_text("#history", "success").await;
    assert!(b.fits_a_phone().await, "the job page is wider than a phone");
    // Enter in a field of a form with two starts the run.
    b.type_into("input[data-param=\"region\"]", "us\u{E007}")
        .await;
    b.wait_js(
        "the run page",
        "return location.hash.startsWith('#/runs/');",
    )
    .await;
    b.wait_text("#run-outcome", "success").await;
    b.wait_text("#output", "report for us 2026").await;

    // A run followed live goes on being followed across a kill -9 and
    // restart of the scheduler (its supervisor lives on).
    b.open(&format!("{base}#/jobs/ticker")).await;
    b.wait_text("h1", "ticker").await;
    b.click("#trigger").await;
    b.wait_text("#output", "tick 2").await;
    assert_eq!(b.text("#live").await.as_deref(), Some("(live)"));
    let run_page = b.hash().await;
    run.kill9();
    b.wait_text("#banners", "does not answer").await;
    // The banner stays in view on a page scrolled far down.
    b.js("const tall = document.createElement('div'); tall.id = 'tall'; tall.style.height = '4000px'; \
          document.body.append(tall); window.scrollTo(0, 3000); return true;")
        .await;
    assert_eq!(
        b.js(
            "const r = document.querySelector('#banners .banner').getBoundingClientRect(); \
              return window.scrollY > 1000 && r.top >= 0 && r.bottom <= window.innerHeight;"
        )
        .await,
        json!(true),
        "the banner scrolled out of view"
    );
    b.js("document.body.style.paddingBottom = ''; return true;")
        .await;
    let before = last_tick(&b.text("#output").await.unwrap_or_default());
    let mut run = env.spawn_run_with("dash2", &["--http", &listen]);
    wait_ready(port);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let shown = last_tick(&b.text("#output").await.unwrap_or_default());
        if shown >= before + 3 && b.text("#live").await.as_deref() == Some("(live)") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "output not followed again after the restart: tick {shown}, {before} before; the page says:\n{}",
            b.text("body").await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_count("#banners .banner", 0).await;
    assert_eq!(b.hash().await, run_page);

    // A page asked for while the scheduler is down appears once it is back.
    run.kill9();
    b.wait_text("#banners", "does not answer").await;
    b.js("location.hash = '#/jobs/report'; return true;").await;
    let _run = env.spawn_run_with("dash3", &["--http", &listen]);
    b.wait_text("h1", "report").await;
    b.wait_count("#banners .banner", 0).await;
    let ticker = env
        .records("ticker")
        .into_iter()
        .next()
        .expect("the ticker's record");
    env.cmd(&["cancel", ticker["run_id"].as_str().unwrap()])
        .run()
        .success();
}

/// The response head of `GET path`, lower-cased.
fn head_of(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply.split("\r\n\r\n").next().unwrap().to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_jobs_render_and_without_tokens_the_actions_are_disabled() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    let mut toml = String::new();
    for i in 0..1000 {
        toml.push_str(&format!(
            "[jobs.job-{i:04}]\nschedule = \"{} * * * *\"\nshell = \"true\"\n\n",
            i % 60
        ));
    }
    let env = Env::new().config(&toml);
    let run = env.spawn_run_with("many", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    wait_ready(port);
    // Only its own script, style and API; nothing inline, nothing from elsewhere.
    for path in ["/", "/dashboard/app.js", "/dashboard/app.css"] {
        let head = head_of(port, path);
        assert!(
            head.starts_with("http/1.0 200") || head.starts_with("http/1.1 200"),
            "{path}: {head}"
        );
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'"),
            "{path}: {head}"
        );
    }
    b.open(&format!("http://127.0.0.1:{port}/")).await;
    b.wait_text("#jobs-count", "1000 of 1000 jobs").await;
    b.wait_count("#jobs tbody tr", 100).await;
    // From the page's start to the table on screen, by the browser's clock.
    let page_ms = b
        .js(
            "const m = performance.getEntriesByName('bgsched-jobs-drawn'); \
             return m.length ? Math.round(m[0].startTime) : -1;",
        )
        .await;
    // How much of it was the API's answer (debug build, 425 KB of JSON).
    let api_ms = b
        .client
        .execute(
            "const r = performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/v1/jobs')); \
             return r.length ? Math.round(r[0].duration) : -1;",
            vec![],
        )
        .await
        .expect("script");
    println!("overview of 1,000 jobs rendered in {page_ms} ms, of which GET /api/v1/jobs took {api_ms} ms");
    assert!(b.fits_a_phone().await, "the overview is wider than a phone");
    // The filter narrows the table without a reload.
    b.type_into("#filter", "job-09").await;
    b.wait_text("#jobs-count", "100 of 1000 jobs").await;

    b.open(&format!("http://127.0.0.1:{port}/#/jobs/job-0007"))
        .await;
    b.wait_text("h1", "job-0007").await;
    b.wait_text("#scope", "read-only API").await;
    let (disabled, why) = b.disabled("#trigger").await;
    assert!(disabled, "trigger is enabled without tokens");
    assert!(why.contains("read-only"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_a_cluster_the_dashboard_shows_the_leader_and_members_and_the_change_after_kill_9() {
    let _serial = SERIAL.lock().await;
    let Some(b) = browser().await else { return };
    let etcd = Etcd::start();
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/dash\"\nlease_ttl = \"2s\"\n\n{}",
        etcd.endpoint(),
        jobs(chrono::Utc::now())
    ));
    let names = ["a", "b", "c"];
    let mut replicas: Vec<Scheduler> = names
        .iter()
        .map(|i| env.spawn_run_with(i, &["--http", "127.0.0.1:0"]))
        .collect();
    let ports: Vec<u16> = replicas.iter().map(Scheduler::http_port).collect();
    let leader = env.leader();
    let li = names.iter().position(|n| *n == leader).unwrap();
    let watcher = (li + 1) % 3;
    b.open(&format!("http://127.0.0.1:{}/", ports[watcher]))
        .await;
    b.wait_text("#ov-mode", "cluster").await;
    b.wait_text("#ov-leader", &leader).await;
    b.wait_count("#members tbody tr", 3).await;

    replicas[li].kill9();
    let deadline = Instant::now() + PATIENCE;
    let new_leader = loop {
        let shown = b.text("#ov-leader").await.unwrap_or_default();
        if let Some(n) = names
            .iter()
            .find(|n| **n != leader && shown.starts_with(**n))
        {
            break n.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the leader shown stayed {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    b.wait_count("#members tbody tr", 2).await;
    assert_eq!(
        env.list_json()["leader"]["instance"].as_str(),
        Some(new_leader.as_str())
    );
    drop(replicas);
}
