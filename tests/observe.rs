//! The HTTP endpoints of `bgsched run` (`/metrics`, `/healthz`, `/readyz`,
//! `/status`) and `--log-format json`, against the real binary; in a
//! cluster against a real etcd that is paused and resumed.

mod common;

use common::etcd::Etcd;
use common::*;
use rustix::process::Signal;
use serde_json::Value;
use std::sync::Mutex;

/// Each test runs replicas and jobs every second; one at a time keeps a
/// loaded 2-core machine from starving them.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job every second and a job that runs 3 s every second (so most of its
/// ticks are skipped).
const JOBS: &str = "[jobs.tick]\nschedule = \"@every 1s\"\ncommand = [\"true\"]\n\n\
                    [jobs.slow]\nschedule = \"@every 1s\"\nshell = 'sleep 3'\n";

fn metrics(port: u16) -> String {
    match http_get(port, "/metrics") {
        Some((200, body)) => body,
        other => panic!("/metrics: {other:?}"),
    }
}

/// Wait until `series` on `port` is at least `at_least`.
fn wait_sample(port: u16, series: &str, at_least: f64) {
    let mut last = String::new();
    wait_until(PATIENCE, &format!("{series} >= {at_least}"), || {
        last = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        sample(&last, series) >= at_least
    });
}

fn status_code(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|r| r.0)
}

fn json_body(port: u16, path: &str) -> (u16, Value) {
    let (code, body) = http_get(port, path).unwrap_or_else(|| panic!("{path}: no answer"));
    let value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"));
    (code, value)
}

/// A job that always fails, and is retried once.
const FLAKY: &str = "[jobs.flaky]\nschedule = \"@every 2s\"\nshell = 'exit 3'\nretries = 1\nretry_backoff = \"100ms\"\n";

#[test]
fn metrics_move_with_runs_skips_retries_and_a_standby_taking_over() {
    let _serial = serial();
    let env = Env::new().config(&format!("{JOBS}\n{FLAKY}"));
    let mut a = env.spawn_run_with("a", &["--http", "127.0.0.1:0"]);
    let pa = a.http_port();

    wait_sample(
        pa,
        r#"bgsched_runs_total{job="tick",outcome="success"}"#,
        2.0,
    );
    wait_sample(
        pa,
        r#"bgsched_skipped_ticks_total{job="slow",reason="still_running"}"#,
        1.0,
    );
    wait_sample(pa, r#"bgsched_run_duration_seconds_count{job="slow"}"#, 1.0);
    wait_sample(pa, r#"bgsched_retries_total{job="flaky"}"#, 1.0);
    wait_sample(
        pa,
        r#"bgsched_runs_total{job="flaky",outcome="failed"}"#,
        1.0,
    );
    let text = metrics(pa);
    assert_eq!(sample(&text, "bgsched_is_leader"), 1.0, "{text}");
    assert!(sample(&text, "bgsched_leader_term") >= 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            r#"bgsched_leadership_changes_total{change="acquired"}"#
        ),
        1.0
    );
    assert!(
        sample(
            &text,
            r#"bgsched_fire_lateness_seconds_count{job="tick",trigger="schedule"}"#
        ) >= 2.0,
        "{text}"
    );
    // `slow` sleeps 3 s: its duration comes from the supervisor's report.
    assert!(sample(&text, r#"bgsched_run_duration_seconds_sum{job="slow"}"#) >= 2.9);
    assert_eq!(sample(&text, "bgsched_config_generation"), 1.0);
    assert_eq!(sample(&text, "bgsched_config_last_reload_success"), 1.0);
    assert!(text.contains("bgsched_running_jobs "), "{text}");
    // No Accept header: the Prometheus text format 0.0.4 (OpenMetrics only
    // when asked for, see metrics_pass_promtool_...).
    assert!(
        text.contains("# TYPE bgsched_runs_total counter\n") && !text.contains("# EOF"),
        "not Prometheus text 0.0.4: {text}"
    );
    // Counters keep moving.
    let runs = sample(&text, r#"bgsched_runs_total{job="tick",outcome="success"}"#);
    wait_sample(
        pa,
        r#"bgsched_runs_total{job="tick",outcome="success"}"#,
        runs + 2.0,
    );

    let (code, health) = json_body(pa, "/healthz");
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    let (code, ready) = json_body(pa, "/readyz");
    assert_eq!((code, ready["status"].as_str()), (200, Some("ready")));
    let (code, status) = json_body(pa, "/status");
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["mode"], "standalone");
    assert_eq!(status["instance"], "a");
    assert_eq!(status["is_leader"], true);
    assert_eq!(status["leader"]["instance"], "a");
    let names: Vec<&str> = status["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert_eq!(names, ["flaky", "slow", "tick"]);
    assert!(status["jobs"][2]["last_run"]["outcome"] == "success");
    assert_eq!(status_code(pa, "/nowhere"), Some(404));

    // A standby is live and ready, but not the leader.
    let b = env.spawn_run_with("b", &["--http", "127.0.0.1:0"]);
    let pb = b.http_port();
    assert_eq!(status_code(pb, "/healthz"), Some(200));
    assert_eq!(status_code(pb, "/readyz"), Some(200));
    let text = metrics(pb);
    assert_eq!(sample(&text, "bgsched_is_leader"), 0.0, "{text}");
    assert_eq!(sample(&text, "bgsched_leader_term"), 0.0, "{text}");

    // The leader goes: b takes over, and its counters start moving.
    a.signal(Signal::TERM);
    assert_eq!(a.wait_exit(PATIENCE), Some(0), "{}", a.log_text());
    wait_sample(pb, "bgsched_is_leader", 1.0);
    wait_sample(
        pb,
        r#"bgsched_leadership_changes_total{change="acquired"}"#,
        1.0,
    );
    wait_sample(
        pb,
        r#"bgsched_runs_total{job="tick",outcome="success"}"#,
        1.0,
    );
    let (_, status) = json_body(pb, "/status");
    assert_eq!(status["leader"]["instance"], "b", "{status}");
}

/// All `bgsched_etcd_request_errors_total` samples of one instance.
fn etcd_errors(port: u16) -> f64 {
    http_get(port, "/metrics")
        .map(|r| r.1)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("bgsched_etcd_request_errors_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn readyz_follows_the_etcd_session_on_leader_and_standby() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/obs\"\nlease_ttl = \"2s\"\n\n{JOBS}",
        etcd.endpoint()
    ));
    let a = env.spawn_run_with("a", &["--http", "127.0.0.1:0"]);
    let pa = a.http_port();
    wait_sample(pa, "bgsched_is_leader", 1.0);
    let b = env.spawn_run_with("b", &["--http", "127.0.0.1:0"]);
    let pb = b.http_port();
    for port in [pa, pb] {
        wait_until(PATIENCE, "ready", || {
            status_code(port, "/readyz") == Some(200)
        });
    }
    let (_, ready) = json_body(pb, "/readyz");
    assert_eq!(ready["etcd"], "session confirmed", "{ready}");
    wait_sample(
        pa,
        r#"bgsched_runs_total{job="tick",outcome="success"}"#,
        1.0,
    );
    let text = metrics(pa);
    assert!(
        sample(
            &text,
            r#"bgsched_etcd_request_duration_seconds_count{op="Txn"}"#
        ) >= 1.0,
        "{text}"
    );
    let (_, status) = json_body(pb, "/status");
    assert_eq!(status["mode"], "cluster");
    assert_eq!(status["instance"], "b");
    assert_eq!(status["is_leader"], false);
    assert_eq!(status["leader"]["instance"], "a");
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );

    etcd.pause();
    for port in [pa, pb] {
        wait_until(PATIENCE, "not ready while etcd is paused", || {
            status_code(port, "/readyz") == Some(503)
        });
        // Not ready is not dead: liveness holds.
        assert_eq!(status_code(port, "/healthz"), Some(200));
    }
    // The calls that time out while etcd is paused are counted.
    wait_until(PATIENCE, "etcd errors counted while it is paused", || {
        etcd_errors(pa) + etcd_errors(pb) >= 1.0
    });
    etcd.resume();
    for port in [pa, pb] {
        wait_until(PATIENCE, "ready again after etcd resumed", || {
            status_code(port, "/readyz") == Some(200)
        });
    }
    // Someone leads again and runs resume.
    wait_until(PATIENCE, "a leader after the outage", || {
        [pa, pb]
            .iter()
            .any(|p| sample(&metrics(*p), "bgsched_is_leader") == 1.0)
    });
}

#[test]
fn json_log_lines_of_runs_carry_job_run_tick_instance_and_term() {
    let _serial = serial();
    let env = Env::new().config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n{JOBS}\n[jobs.talk]\nschedule = \"@every 1s\"\nshell = 'echo said-something'\n"
    ));
    let log = env.path("j.log");
    let mut cmd = env
        .cmd(&["--log-format", "json", "run", "--instance-id", "j"])
        .0;
    cmd.stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let run = Scheduler {
        child: cmd.spawn().unwrap(),
        log,
        instance: "j".to_string(),
    };
    // The [http] table is honoured: the endpoints answer.
    let port = run.http_port();
    wait_sample(
        port,
        r#"bgsched_skipped_ticks_total{job="slow",reason="still_running"}"#,
        1.0,
    );
    wait_sample(
        port,
        r#"bgsched_runs_total{job="slow",outcome="success"}"#,
        1.0,
    );
    wait_sample(
        port,
        r#"bgsched_runs_total{job="talk",outcome="success"}"#,
        1.0,
    );
    drop(run);

    let text = std::fs::read_to_string(env.path("j.log")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let message = v["message"].as_str().unwrap_or_default();
        let kind = match message {
            "run started" => "run started",
            "run finished" => "run finished",
            "fired" => "fired",
            "said-something" => "output",
            m if m.starts_with("tick skipped") => "skip",
            _ => continue,
        };
        for field in ["job", "run_id", "tick", "instance"] {
            assert!(v[field].is_string(), "{field} missing in {line}");
        }
        assert!(v["term"].as_u64().is_some_and(|t| t >= 1), "term in {line}");
        assert_eq!(v["instance"], "j", "{line}");
        assert_eq!(v["run_id"].as_str().map(str::len), Some(36), "{line}");
        seen.insert(kind);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["fired", "output", "run finished", "run started", "skip"],
        "{text}"
    );
}

#[test]
fn an_address_that_cannot_be_bound_is_a_clear_error() {
    let env = Env::new().config(JOBS);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    env.cmd(&["run", "--http", &addr])
        .run()
        .code(1)
        .stderr_has(&format!("bgsched: cannot serve http on {addr}: "));
    env.cmd(&["run", "--http", "localhost:9187"])
        .run()
        .code(2)
        .stderr_has("--http");
}

/// `GET /metrics` with this Accept header: (Content-Type, body).
fn metrics_accepting(port: u16, accept: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("read reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("http reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .expect("content-type");
    (content_type, body.to_string())
}

/// promtool from Debian's `prometheus` package (`.ci/run` installs it).
fn promtool() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/bin")])
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    found
}

#[test]
fn metrics_pass_promtool_as_text_and_are_openmetrics_when_asked() {
    let _serial = serial();
    let env = Env::new().config(JOBS);
    let run = env.spawn_run_with("a", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    // Counters with values and histograms with observations.
    wait_sample(
        port,
        r#"bgsched_runs_total{job="tick",outcome="success"}"#,
        1.0,
    );
    wait_sample(
        port,
        r#"bgsched_skipped_ticks_total{job="slow",reason="still_running"}"#,
        1.0,
    );

    let (content_type, text) = metrics_accepting(port, "text/plain");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        text.contains("# TYPE bgsched_runs_total counter\n") && !text.contains("# EOF"),
        "{text}"
    );
    match promtool() {
        None => eprintln!(
            "skipped promtool: not found on PATH or in /usr/bin (apt-get install prometheus)"
        ),
        Some(promtool) => {
            use std::io::Write;
            let mut check = std::process::Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run promtool");
            check
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("feed promtool");
            let out = check.wait_with_output().expect("promtool");
            assert!(
                out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
                "promtool check metrics: {}{}\n{text}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let prometheus_accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, open) = metrics_accepting(port, prometheus_accept);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(open.contains("# TYPE bgsched_runs counter\n"), "{open}");
    assert!(open.ends_with("# EOF\n"), "{open}");
}
