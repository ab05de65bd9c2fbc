//! `[notify]` webhooks (README "Notifications") against a receiver in the
//! test: what is sent, signed, retried, and by whom.

mod common;

use common::etcd::{http_request, Etcd};
use common::webhook::{Delivery, Receiver};
use common::*;
use hmac::{KeyInit, Mac};
use std::time::Duration;

const SECRET: &str = "a-webhook-secret-0123456789";

/// What a receiver computes to check a delivery came from someone who
/// knows the secret.
fn expected_signature(body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

const TOKEN: &str = "trigger-token-0123456789";

/// Start a run of `job` through the API and wait for its end: its run id.
/// (A standalone `bgsched trigger` runs the job in the terminal, without
/// the scheduler, and notifies nobody.)
#[track_caller]
fn run_through_api(port: u16, job: &str) -> String {
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str())];
    let long = Duration::from_secs(60);
    let (status, body) = http_request(
        port,
        "POST",
        &format!("/api/v1/jobs/{job}/runs"),
        Some("{}"),
        long,
        &headers,
    )
    .unwrap();
    assert_eq!(status, 202, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    let (status, body) = http_request(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=30s"),
        None,
        long,
        &headers,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    run_id
}

/// `bgsched run` as `instance` with the API on a free port, the token
/// [`TOKEN`] allowed to start runs, once it is ready: it and its port.
fn serve_api(env: &Env, instance: &str) -> (Scheduler, u16) {
    env.write("tokens", &format!("{TOKEN} trigger\n"));
    let run = env.spawn_run_with(instance, &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    wait_ready(port);
    (run, port)
}

fn of_job<'a>(got: &'a [Delivery], job: &str) -> Vec<&'a Delivery> {
    got.iter().filter(|d| d.json["job"] == job).collect()
}

/// Fails its first run, succeeds after.
const FLAKY: &str = r#"[jobs.flaky]
schedule = "@yearly"
shell = 'if [ -e failed-once ]; then echo fine; else touch failed-once; echo broken; exit 3; fi'
"#;

#[test]
fn a_webhook_receiver_gets_failed_then_recovered_with_a_valid_signature() {
    let receiver = Receiver::start();
    let silent = Receiver::silent();
    // The very first attempt is refused with a 503: it is retried.
    receiver.answer_next(&[503]);
    let env = Env::new().config(&format!(
        r#"[[notify.webhook]]
url = "{}"
secret_file = "hook.secret"
events = ["failed", "recovered", "succeeded"]
timeout = "5s"
retries = 2

# Never answers: its deliveries time out, and hold up nothing.
[[notify.webhook]]
url = "{}"
timeout = "1s"
retries = 1

[http]
tokens_file = "tokens"

{FLAKY}
[jobs.beat]
schedule = "@every 1s"
shell = 'echo beat >> beats'
"#,
        receiver.url("/services/T0/path-token"),
        silent.url("/silent")
    ));
    env.write("hook.secret", &format!("{SECRET}\n"));
    let (run, port) = serve_api(&env, "notify");

    let first_run = run_through_api(port, "flaky");
    let got = receiver.wait_for("failed, refused once and then delivered", |got| {
        of_job(got, "flaky").len() >= 2
    });
    let failed = of_job(&got, "flaky");
    assert_eq!(
        failed
            .iter()
            .map(|d| (d.event(), d.answered))
            .collect::<Vec<_>>(),
        [("failed", Some(503)), ("failed", Some(200))]
    );
    assert_eq!(
        failed[0].header("X-Bgsched-Delivery"),
        failed[1].header("X-Bgsched-Delivery"),
        "a retry is the same delivery"
    );
    let body = &failed[1].json;
    assert_eq!(body["run_id"], first_run);
    assert_eq!(body["outcome"], "failed");
    assert_eq!(body["record"]["exit_code"], 3);
    assert!(
        body["record"]["output_tail"]
            .as_str()
            .unwrap()
            .contains("broken"),
        "{body}"
    );
    assert_eq!(body["sent_by"], "notify");

    let beats_before = env.lines("beats").len();
    run_through_api(port, "flaky");
    let got = receiver.wait_for("recovered and succeeded", |got| {
        of_job(got, "flaky").len() >= 4
    });
    let flaky = of_job(&got, "flaky");
    let mut after: Vec<&str> = flaky[2..].iter().map(|d| d.event()).collect();
    after.sort_unstable();
    assert_eq!(after, ["recovered", "succeeded"]);
    for d in &flaky {
        assert_eq!(d.path, "/services/T0/path-token");
        assert_eq!(d.header("Content-Type"), "application/json");
        assert_eq!(d.header("X-Bgsched-Event"), d.event());
        assert_eq!(
            d.header("X-Bgsched-Signature-256"),
            expected_signature(&d.body),
            "{d:?}"
        );
    }
    // A job that keeps succeeding recovers only once.
    run_through_api(port, "flaky");
    let got = receiver.wait_for("the third run's succeeded", |got| {
        of_job(got, "flaky").len() >= 5
    });
    assert_eq!(of_job(&got, "flaky")[4].event(), "succeeded");

    // The silent receiver got the failure and the recovery (not the
    // successes: by default it is not told of those), each given up on
    // after two attempts.
    let silent_got = silent.wait_for("two attempts of each", |got| got.len() >= 4);
    let mut events: Vec<&str> = silent_got.iter().map(Delivery::event).collect();
    events.sort_unstable();
    assert_eq!(
        events,
        ["failed", "failed", "recovered", "recovered"],
        "{silent_got:?}"
    );
    assert!(
        silent_got[0].header("X-Bgsched-Signature-256").is_empty(),
        "no secret, no signature"
    );
    wait_until(PATIENCE, "the silent webhook given up", || {
        run.log_text().contains("giving up after 2 attempts")
    });
    // Meanwhile the every-second job went on firing.
    wait_until(PATIENCE, "beats while deliveries hung", || {
        env.lines("beats").len() >= beats_before + 3
    });

    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(
        sample(
            &metrics,
            &format!(
                r#"bgsched_webhook_attempts_total{{event="recovered",webhook="http://127.0.0.1:{}/…",result="delivered"}}"#,
                receiver.port
            )
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            &format!(
                r#"bgsched_webhook_attempts_total{{event="failed",webhook="http://127.0.0.1:{}/…",result="failed"}}"#,
                receiver.port
            )
        ) == 1.0
            && sample(
                &metrics,
                &format!(
                    r#"bgsched_webhook_attempts_total{{event="failed",webhook="http://127.0.0.1:{}/…",result="failed"}}"#,
                    silent.port
                )
            ) == 2.0,
        "the 503 and the two timeouts: {metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &format!(
                r#"bgsched_webhooks_undelivered_total{{event="failed",webhook="http://127.0.0.1:{}/…",result="retries_exhausted"}}"#,
                silent.port
            )
        ),
        1.0,
        "{metrics}"
    );
    let log = run.log_text();
    assert!(
        log.contains("webhook delivery failed (answered 503 Service Unavailable); retrying in 1s"),
        "{log}"
    );
    assert!(log.contains("webhook delivered"), "{log}");
    assert!(log.contains("no answer within 1s"), "{log}");
    assert!(
        !log.contains("path-token") && !log.contains(SECRET),
        "the URL's path and the secret stay out of the log: {log}"
    );
}

#[test]
fn ticks_missed_while_no_scheduler_ran_are_one_missed_notification() {
    let receiver = Receiver::start();
    let env = Env::new().config(&format!(
        r#"[[notify.webhook]]
url = "{}"
events = ["missed"]

[jobs.beat]
schedule = "@every 1s"
catchup = "0s"
shell = 'echo beat >> beats'
"#,
        receiver.url("/hook")
    ));
    let mut run = env.spawn_run("first");
    wait_until(PATIENCE, "a beat", || !env.lines("beats").is_empty());
    run.signal(rustix::process::Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0));
    std::thread::sleep(Duration::from_secs(3));
    let _again = env.spawn_run("second");
    let got = receiver.wait_for("missed", |got| !got.is_empty());
    assert_eq!(got[0].event(), "missed");
    assert_eq!(got[0].json["job"], "beat");
    assert!(
        got[0].json["record"]["missed_ticks"].as_u64().unwrap() >= 2,
        "{:?}",
        got[0].json
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "{:?}",
        receiver.deliveries()
    );
}

#[test]
fn in_a_cluster_only_the_leader_sends_and_each_failure_once() {
    let etcd = Etcd::start();
    let receiver = Receiver::start();
    let env = Env::new().config(&format!(
        r#"[cluster]
etcd = ["{}"]
prefix = "/notify"
lease_ttl = "2s"

[[notify.webhook]]
url = "{}"
events = ["failed"]

[jobs.fails]
schedule = "@yearly"
shell = 'echo broken; exit 3'
"#,
        etcd.endpoint(),
        receiver.url("/hook")
    ));
    let replicas: Vec<Scheduler> = ["a", "b", "c"].iter().map(|i| env.spawn_run(i)).collect();
    let leader = env.leader();
    let runs: Vec<String> = (0..2).map(|_| env.trigger_detached("fails")).collect();
    let got = receiver.wait_for("both failures", |got| got.len() >= 2);
    std::thread::sleep(Duration::from_secs(3));
    let got_now = receiver.deliveries();
    assert_eq!(got_now.len(), 2, "{got:?}");
    let mut notified: Vec<&str> = got_now
        .iter()
        .map(|d| d.json["run_id"].as_str().unwrap())
        .collect();
    notified.sort_unstable();
    let mut expected: Vec<&str> = runs.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(notified, expected);
    for d in &got_now {
        assert_eq!(d.json["sent_by"], leader.as_str(), "{:?}", d.json);
    }
    drop(replicas);
}

#[test]
fn a_run_that_succeeded_on_a_retry_is_no_failure_to_recover_from() {
    let receiver = Receiver::start();
    let env = Env::new().config(&format!(
        r#"[[notify.webhook]]
url = "{}"
events = ["failed", "recovered", "succeeded"]

[http]
tokens_file = "tokens"

[jobs.retried]
schedule = "@yearly"
retries = 1
retry_backoff = "100ms"
shell = 'if [ -e failed-once ]; then echo fine; else touch failed-once; exit 3; fi'
"#,
        receiver.url("/hook")
    ));
    let (_run, port) = serve_api(&env, "retries");
    // Its first attempt fails, the retry succeeds: the run succeeded.
    run_through_api(port, "retried");
    receiver.wait_for("the first run's succeeded", |got| !got.is_empty());
    run_through_api(port, "retried");
    receiver.wait_for("the second run's succeeded", |got| got.len() >= 2);
    std::thread::sleep(Duration::from_secs(1));
    let events: Vec<String> = receiver
        .deliveries()
        .iter()
        .map(|d| d.event().to_string())
        .collect();
    assert_eq!(events, ["succeeded", "succeeded"]);
}

#[test]
fn a_stopping_scheduler_still_retries_what_it_was_delivering() {
    let receiver = Receiver::start();
    receiver.answer_next(&[503]);
    let env = Env::new().config(&format!(
        r#"[[notify.webhook]]
url = "{}"
events = ["failed"]

[http]
tokens_file = "tokens"

{FLAKY}"#,
        receiver.url("/hook")
    ));
    let (mut run, port) = serve_api(&env, "stopping");
    run_through_api(port, "flaky");
    receiver.wait_for("the refused attempt", |got| !got.is_empty());
    run.signal(rustix::process::Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    let got = receiver.deliveries();
    assert_eq!(
        got.iter().map(|d| d.answered).collect::<Vec<_>>(),
        [Some(503), Some(200)],
        "the retry was not sent before the scheduler stopped: {}",
        run.log_text()
    );
}

#[test]
fn an_api_run_whose_supervisor_is_killed_ends_with_it_and_is_lost_once() {
    let receiver = Receiver::start();
    let env = Env::new().config(&format!(
        r#"[[notify.webhook]]
url = "{}"
events = ["lost", "failed"]

[http]
tokens_file = "tokens"

[jobs.long]
schedule = "@yearly"
shell = 'echo $$ > job-pid; sleep 600'
"#,
        receiver.url("/hook")
    ));
    let (_run, port) = serve_api(&env, "killer");
    let auth = format!("Bearer {TOKEN}");
    let (status, body) = http_request(
        port,
        "POST",
        "/api/v1/jobs/long/runs",
        Some("{}"),
        PATIENCE,
        &[("Authorization", auth.as_str())],
    )
    .unwrap();
    assert_eq!(status, 202, "{body}");
    let mut supervisor = 0;
    let mut job = 0;
    wait_until(PATIENCE, "the run going", || {
        let running = env.job_view("long")["running"].clone();
        supervisor = running[0]["supervisor_pid"].as_i64().unwrap_or(0) as i32;
        job = env
            .lines("job-pid")
            .first()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        supervisor > 0 && job > 0
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(supervisor).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_until(PATIENCE, "the job gone with its supervisor", || !alive(job));
    let got = receiver.wait_for("lost", |got| !got.is_empty());
    assert_eq!(got[0].event(), "lost", "{got:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        receiver.deliveries().len(),
        1,
        "{:?}",
        receiver.deliveries()
    );
    assert_eq!(env.records("long")[0]["outcome"], "lost");
}

#[test]
fn a_refusal_other_than_408_429_or_5xx_is_not_retried() {
    let receiver = Receiver::start();
    receiver.answer_next(&[404, 302]);
    let env = Env::new().config(&format!(
        r#"[[notify.webhook]]
url = "{}"
events = ["failed"]

[http]
tokens_file = "tokens"

[jobs.fails]
schedule = "@yearly"
shell = 'exit 3'
"#,
        receiver.url("/hook")
    ));
    let (run, port) = serve_api(&env, "refused");
    run_through_api(port, "fails");
    run_through_api(port, "fails");
    receiver.wait_for("both refusals", |got| got.len() >= 2);
    wait_until(PATIENCE, "both given up", || {
        run.log_text().matches("not retried").count() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let answered: Vec<_> = receiver.deliveries().iter().map(|d| d.answered).collect();
    assert_eq!(
        answered,
        [Some(404), Some(302)],
        "a refusal was retried (or a redirect followed)"
    );
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(
        sample(
            &metrics,
            &format!(
                r#"bgsched_webhooks_undelivered_total{{event="failed",webhook="http://127.0.0.1:{}/…",result="refused"}}"#,
                receiver.port
            )
        ),
        2.0,
        "{metrics}"
    );
}
