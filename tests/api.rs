//! The HTTP API (`/api/v1`, README "HTTP API") over real HTTP against the
//! real binary: standalone, and three replicas on a real etcd.

mod common;

use common::etcd::{http_request, Etcd};
use common::*;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Replicas and long polls: one test at a time on a loaded 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const READ: &str = "read-token-0123456789";
const TRIGGER: &str = "trigger-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

const TOKENS: &str = "# who may call the API\nread-token-0123456789 read\ntrigger-token-0123456789 trigger\n\nadmin-token-0123456789 admin\n";

/// A job taking parameters, a job that runs long, one that fails.
fn jobs() -> String {
    format!(
        r#"[jobs.order]
schedule = "@yearly"
shell = 'echo "order $BGSCHED_PARAM_ORDER_ID in $BGSCHED_PARAM_MODE mode"; cat "$BGSCHED_PARAMS_FILE"'
[jobs.order.params]
order_id = {{ required = true, pattern = "[0-9]+" }}
mode = {{ default = "fast", pattern = "fast|slow" }}

[jobs.long]
schedule = "@yearly"
shell = '{}; sleep 600'

[jobs.fails]
schedule = "@yearly"
shell = 'echo broken >&2; exit 3'

[jobs.tree]
schedule = "@yearly"
kill_grace = "2s"
shell = 'setsid sleep 600 & echo $! > grandchild; sleep 600'

[jobs.ticker]
schedule = "@yearly"
shell = 'for i in 1 2 3 4 5 6; do echo "line $i"; sleep 0.4; done'

[jobs.later]
schedule = "@yearly"
shell = '{}; echo "later $BGSCHED_PARAM_WHAT"'
[jobs.later.params]
what = {{ default = "nothing" }}

[jobs.retried]
schedule = "@yearly"
retries = 1
retry_backoff = "300ms"
shell = 'echo "attempt $BGSCHED_ATTEMPT"; sleep 0.5; [ "$BGSCHED_ATTEMPT" = 2 ]'

[jobs.slowretry]
schedule = "@yearly"
retries = 1
retry_backoff = "1m"
shell = 'echo failing; echo $$ > slowretry-pid; exit 1'

[jobs.beat]
schedule = "@every 1s"
shell = 'echo "$BGSCHED_TRIGGER $BGSCHED_INSTANCE" >> beats'
"#,
        ledger_line("start", "ledger"),
        ledger_line("later", "later-ledger")
    )
}

/// One API call: (status, the JSON body, or the text as a JSON string).
#[track_caller]
fn call(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, text) = http_request(port, method, path, body, Duration::from_secs(60), &headers)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// An error reply: its status, code and message.
#[track_caller]
fn assert_error(reply: (u16, Value), status: u16, code: &str, message: &str) {
    assert_eq!(reply.0, status, "{reply:?}");
    assert_eq!(reply.1["error"]["code"], code, "{reply:?}");
    let said = reply.1["error"]["message"].as_str().unwrap_or_default();
    assert!(said.contains(message), "expected {message:?} in {reply:?}");
}

/// Replicas `names` of a cluster on a fresh etcd, under `prefix`, each
/// serving the API (with the tokens) on a port of its own.
fn cluster(prefix: &str, names: &[&str]) -> (Etcd, Env, Vec<Scheduler>, Vec<u16>) {
    let etcd = Etcd::start();
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\nlease_ttl = \"2s\"\n\n[http]\ntokens_file = \"tokens\"\n\n{}",
        etcd.endpoint(),
        jobs()
    ));
    env.write("tokens", TOKENS);
    let replicas: Vec<Scheduler> = names
        .iter()
        .map(|i| env.spawn_run_with(i, &["--http", "127.0.0.1:0"]))
        .collect();
    let ports = replicas.iter().map(Scheduler::http_port).collect();
    (etcd, env, replicas, ports)
}

fn leader_of(env: &Env) -> String {
    env.leader()
}

fn standalone(with_tokens: bool) -> (Env, Scheduler, u16) {
    let mut toml = jobs();
    if with_tokens {
        toml.push_str("\n[http]\ntokens_file = \"tokens\"\n");
    }
    let env = Env::new().config(&toml);
    env.write("tokens", TOKENS);
    let run = env.spawn_run_with("api", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    (env, run, port)
}

#[test]
fn a_caller_triggers_with_parameters_and_gets_the_result_by_long_poll() {
    let _serial = serial();
    let (env, _run, port) = standalone(true);
    let (status, accepted) = call(
        port,
        "POST",
        "/api/v1/jobs/order/runs",
        Some(TRIGGER),
        Some(r#"{"params": {"order_id": "42"}}"#),
    );
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    assert_eq!(accepted["status_url"], format!("/api/v1/runs/{run_id}"));
    let (status, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_eq!(rec["run_id"], run_id.as_str());
    assert_eq!(rec["trigger"], "manual");
    assert_eq!(rec["params"], json!({"order_id": "42", "mode": "fast"}));
    let expected = "order 42 in fast mode\n{\n  \"mode\": \"fast\",\n  \"order_id\": \"42\"\n}";
    assert_eq!(rec["output_tail"], expected);
    let (status, out) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}/output"),
        Some(READ),
        None,
    );
    assert_eq!((status, out), (200, Value::String(expected.into())));
    // The record is the one `history` shows.
    let recs = env.records("order");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["run_id"], run_id.as_str());

    // A failing run's result says so, with its exit code.
    let (_, accepted) = call(port, "POST", "/api/v1/jobs/fails/runs", Some(ADMIN), None);
    let run_id = accepted["run_id"].as_str().unwrap();
    let (_, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(
        (rec["outcome"].clone(), rec["exit_code"].clone()),
        (json!("failed"), json!(3)),
        "{rec}"
    );

    // Without `wait` a running run answers at once, as running.
    let (_, accepted) = call(
        port,
        "POST",
        "/api/v1/jobs/long/runs",
        Some(TRIGGER),
        Some("{}"),
    );
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    wait_until(PATIENCE, "the long run to be recorded running", || {
        call(
            port,
            "GET",
            &format!("/api/v1/runs/{run_id}"),
            Some(READ),
            None,
        )
        .1["outcome"]
            == "running"
    });
    // A short wait on a run that goes on ends with the run still running.
    let (status, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=300ms"),
        Some(READ),
        None,
    );
    assert_eq!((status, rec["outcome"].clone()), (200, json!("running")));
    // Only one run of "long": overlap = "skip" refuses the next with the active run.
    let refused = call(port, "POST", "/api/v1/jobs/long/runs", Some(TRIGGER), None);
    assert_eq!(
        refused.1["active"]["run_id"],
        run_id.as_str(),
        "{refused:?}"
    );
    assert_error(refused, 409, "still_running", "is already running since");
    assert!(
        env.records("long")
            .iter()
            .any(|r| r["outcome"] == "skipped"),
        "the refusal is recorded as a skip"
    );
    kill_running(&env, "long");
}

/// Kill the job's process group through its recorded pid.
fn kill_running(env: &Env, job: &str) {
    for r in env.job_view(job)["running"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if let Some(pid) = r["pid"].as_i64() {
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
    }
}

#[test]
fn bad_input_gets_its_status_and_a_one_line_message_and_changes_nothing() {
    let _serial = serial();
    let (env, _run, port) = standalone(true);
    let post =
        |path: &str, token: Option<&str>, body: Option<&str>| call(port, "POST", path, token, body);
    assert_error(
        post("/api/v1/jobs/ordr/runs", Some(TRIGGER), None),
        404,
        "unknown_job",
        "no job named \"ordr\"",
    );
    assert_error(
        post("/api/v1/jobs/ordr/runs", Some(TRIGGER), None),
        404,
        "unknown_job",
        "did you mean \"order\"?",
    );
    assert_error(
        post(
            "/api/v1/jobs/order/runs",
            Some(TRIGGER),
            Some("{\"params\": "),
        ),
        400,
        "bad_request",
        "the body must be a JSON object",
    );
    assert_error(
        post(
            "/api/v1/jobs/order/runs",
            Some(TRIGGER),
            Some(r#"{"params": {"order_id": "1"}, "on": "a"}"#),
        ),
        400,
        "bad_request",
        "on and labels choose a member of a cluster",
    );
    assert_error(
        post("/api/v1/jobs/order/runs", Some(TRIGGER), Some("[1]")),
        400,
        "bad_request",
        "the body must be a JSON object",
    );
    assert_error(
        post(
            "/api/v1/jobs/order/runs",
            Some(TRIGGER),
            Some(r#"{"prams": {}}"#),
        ),
        400,
        "bad_request",
        "unknown field `prams`",
    );
    assert_error(
        post(
            "/api/v1/jobs/order/runs",
            Some(TRIGGER),
            Some(r#"{"params": {"order_id": 42}}"#),
        ),
        400,
        "bad_request",
        "expected a string",
    );
    assert_error(
        post(
            "/api/v1/jobs/order/runs",
            Some(TRIGGER),
            Some(r#"{"params": {"order_id": "1", "PATH": "/tmp"}}"#),
        ),
        400,
        "bad_params",
        "job \"order\" has no parameter \"PATH\"; it declares mode, order_id",
    );
    assert_error(
        post(
            "/api/v1/jobs/order/runs",
            Some(TRIGGER),
            Some(r#"{"params": {"order_id": "1; rm -rf /"}}"#),
        ),
        400,
        "bad_params",
        "does not match its pattern \"[0-9]+\"",
    );
    assert_error(
        post("/api/v1/jobs/order/runs", Some(TRIGGER), Some("{}")),
        400,
        "bad_params",
        "job \"order\" requires parameter \"order_id\"",
    );
    let big = format!(
        "{{\"params\": {{\"order_id\": \"{}\"}}}}",
        "1".repeat(1024 * 1024 + 1)
    );
    assert_error(
        post("/api/v1/jobs/order/runs", Some(TRIGGER), Some(&big)),
        413,
        "too_large",
        "larger than 1024 KiB",
    );
    // Tokens and scopes.
    assert_error(
        post("/api/v1/jobs/order/runs", None, None),
        401,
        "unauthorized",
        "Authorization: Bearer TOKEN",
    );
    assert_error(
        post(
            "/api/v1/jobs/order/runs",
            Some("not-a-token-0123456789"),
            None,
        ),
        401,
        "unauthorized",
        "not one of [http] tokens_file",
    );
    assert_error(
        post("/api/v1/jobs/order/runs", Some(READ), None),
        403,
        "forbidden",
        "POST /api/v1/jobs/order/runs needs a token of scope trigger; this one has scope read",
    );
    assert_error(
        call(port, "GET", "/api/v1/jobs", None, None),
        401,
        "unauthorized",
        "send a token",
    );
    assert_error(
        call(
            port,
            "GET",
            "/api/v1/jobs",
            Some("wrong-token-0123456789"),
            None,
        ),
        401,
        "unauthorized",
        "not one of",
    );
    // Run ids.
    assert_error(
        call(port, "GET", "/api/v1/runs/nope", Some(READ), None),
        400,
        "bad_request",
        "\"nope\" is not a run id",
    );
    assert_error(
        call(
            port,
            "GET",
            "/api/v1/runs/01a23502-01e4-71d8-91b7-a38fc6a0586e",
            Some(READ),
            None,
        ),
        404,
        "unknown_run",
        "no run 01a23502-01e4-71d8-91b7-a38fc6a0586e",
    );
    assert_error(
        call(
            port,
            "GET",
            "/api/v1/runs/01a23502-01e4-71d8-91b7-a38fc6a0586e/output",
            Some(READ),
            None,
        ),
        404,
        "unknown_run",
        "no run",
    );
    assert_error(
        call(
            port,
            "GET",
            "/api/v1/runs/01a23502-01e4-71d8-91b7-a38fc6a0586e?wait=forever",
            Some(READ),
            None,
        ),
        400,
        "bad_request",
        "wait=\"forever\" is not a duration",
    );
    assert_error(
        call(
            port,
            "GET",
            "/api/v1/runs/01a23502-01e4-71d8-91b7-a38fc6a0586e?wait=1h",
            Some(READ),
            None,
        ),
        400,
        "bad_request",
        "wait=1h is longer than 10m",
    );
    assert_error(
        call(port, "GET", "/api/v1/jobs/nope", Some(READ), None),
        404,
        "unknown_job",
        "no job named \"nope\"",
    );
    assert_error(
        call(port, "GET", "/api/v1/nothing-here", Some(READ), None),
        404,
        "not_found",
        "no endpoint GET /api/v1/nothing-here",
    );
    // Nothing ran, nothing was recorded.
    for job in ["order", "long", "fails", "tree"] {
        assert!(env.records(job).is_empty(), "{job}: {:?}", env.records(job));
    }
    // The open endpoints stay open with a tokens file.
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/metrics").map(|r| r.0), Some(200));
}

#[test]
fn jobs_are_listed_as_list_json_shows_them() {
    let _serial = serial();
    let (env, _run, port) = standalone(false);
    let (status, all) = call(port, "GET", "/api/v1/jobs", None, None);
    assert_eq!(status, 200, "{all}");
    let names: Vec<&str> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "beat",
            "fails",
            "later",
            "long",
            "order",
            "retried",
            "slowretry",
            "ticker",
            "tree"
        ]
    );
    assert_eq!(all["mode"], "standalone");
    let (status, one) = call(port, "GET", "/api/v1/jobs/order", None, None);
    assert_eq!(status, 200);
    let listed = env.job_view("order");
    for key in [
        "name", "schedule", "timezone", "overlap", "state", "enabled",
    ] {
        assert_eq!(one[key], listed[key], "{key}");
    }
    // Without a tokens file the API is open and read-only.
    assert_error(
        call(port, "POST", "/api/v1/jobs/fails/runs", None, None),
        403,
        "read_only",
        "[http] tokens_file is not set",
    );
    assert_error(
        call(port, "POST", "/api/v1/jobs/fails/runs", Some(ADMIN), None),
        403,
        "read_only",
        "read-only",
    );
    assert!(env.records("fails").is_empty());
}

#[test]
fn a_tokens_file_that_cannot_be_used_stops_check_with_its_line() {
    let env = Env::new().config(&format!("{}\n[http]\ntokens_file = \"tokens\"\n", jobs()));
    env.write("tokens", "read-token-0123456789 read\nshort admin\n");
    let out = env.cmd(&["check"]).run().code(78);
    let tokens = env.path("tokens");
    assert!(
        out.stderr.contains(&format!(
            "tokens_file \"{}\": line 2: the token is shorter than 16 characters",
            tokens.display()
        )),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains("read-token"),
        "a token reached a message: {out:?}"
    );
}

/// Three replicas: a run asked of any replica runs once, on the leader,
/// and any replica answers for its result.
#[test]
fn in_a_cluster_any_replica_starts_a_run_on_the_leader_and_any_answers_for_it() {
    let _serial = serial();
    let (_etcd, env, replicas, ports) = cluster("/api", &["a", "b", "c"]);
    let leader = leader_of(&env);
    let follower = ["a", "b", "c"].iter().position(|i| **i != leader).unwrap();
    let other = ["a", "b", "c"].iter().rposition(|i| **i != leader).unwrap();
    let (status, accepted) = call(
        ports[follower],
        "POST",
        "/api/v1/jobs/order/runs",
        Some(TRIGGER),
        Some(r#"{"params": {"order_id": "7", "mode": "slow"}}"#),
    );
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    let (status, rec) = call(
        ports[other],
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_eq!(rec["instance"], leader.as_str(), "ran on the leader");
    assert_eq!(rec["params"], json!({"order_id": "7", "mode": "slow"}));
    assert!(
        rec["output_tail"]
            .as_str()
            .unwrap()
            .starts_with("order 7 in slow mode\n"),
        "{rec}"
    );

    // "on" places the run on a member, whatever the job's run_on says.
    let (status, accepted) = call(
        ports[follower],
        "POST",
        "/api/v1/jobs/order/runs",
        Some(TRIGGER),
        Some(&format!(
            r#"{{"params": {{"order_id": "8", "mode": "slow"}}, "on": "{}"}}"#,
            ["a", "b", "c"][other]
        )),
    );
    assert_eq!(status, 202, "{accepted}");
    let placed = accepted["run_id"].as_str().unwrap().to_string();
    let (_, rec) = call(
        ports[follower],
        "GET",
        &format!("/api/v1/runs/{placed}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_eq!(rec["instance"], ["a", "b", "c"][other], "{rec}");
    for (body, why) in [
        (
            r#"{"params": {"order_id": "9"}, "labels": {"zone": "a b"}}"#,
            "labels: label value \"a b\" may hold only",
        ),
        (
            r#"{"params": {"order_id": "9"}, "on": ""}"#,
            "on: name a member (its instance id), not an empty string",
        ),
        (
            r#"{"params": {"order_id": "9"}, "labels": {}}"#,
            "labels: give at least one label",
        ),
    ] {
        assert_error(
            call(
                ports[follower],
                "POST",
                "/api/v1/jobs/order/runs",
                Some(TRIGGER),
                Some(body),
            ),
            400,
            "bad_request",
            why,
        );
    }

    // Skip holds cluster-wide: a second run asked of another replica is refused.
    let (_, accepted) = call(
        ports[other],
        "POST",
        "/api/v1/jobs/long/runs",
        Some(TRIGGER),
        None,
    );
    let long_id = accepted["run_id"].as_str().unwrap().to_string();
    wait_until(PATIENCE, "the long run to start", || {
        !env.lines("ledger").is_empty()
    });
    let refused = call(
        ports[follower],
        "POST",
        "/api/v1/jobs/long/runs",
        Some(TRIGGER),
        None,
    );
    assert_eq!(
        refused.1["active"]["run_id"],
        long_id.as_str(),
        "{refused:?}"
    );
    assert_error(refused, 409, "still_running", "already running");
    assert_eq!(env.lines("ledger").len(), 1, "the refused run started");
    // Any replica cancels it, wherever it runs.
    let (status, asked) = call(
        ports[follower],
        "POST",
        &format!("/api/v1/runs/{long_id}/cancel"),
        Some(TRIGGER),
        None,
    );
    assert_eq!(status, 202, "{asked}");
    let (_, rec) = call(
        ports[other],
        "GET",
        &format!("/api/v1/runs/{long_id}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
    let by = format!(
        "cancelled by the API on instance {}",
        ["a", "b", "c"][follower]
    );
    assert!(rec["reason"].as_str().unwrap().starts_with(&by), "{rec}");
    // Bad parameters are refused by the replica asked, before the leader sees them.
    assert_error(
        call(
            ports[follower],
            "POST",
            "/api/v1/jobs/order/runs",
            Some(TRIGGER),
            Some(r#"{"params": {"order_id": "x"}}"#),
        ),
        400,
        "bad_params",
        "does not match",
    );
    drop(replicas);
}

/// Pid of a process that is still there (not a zombie).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn cancel_records_cancelled_and_ends_the_whole_process_tree() {
    let _serial = serial();
    let (env, _run, port) = standalone(true);
    let (_, accepted) = call(port, "POST", "/api/v1/jobs/tree/runs", Some(TRIGGER), None);
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    let mut grandchild = 0;
    wait_until(PATIENCE, "the job's escaped grandchild", || {
        grandchild = std::fs::read_to_string(env.path("grandchild"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        grandchild > 0
    });
    wait_until(PATIENCE, "the run's running record", || {
        call(
            port,
            "GET",
            &format!("/api/v1/runs/{run_id}"),
            Some(READ),
            None,
        )
        .1["outcome"]
            == "running"
    });
    let cancel = format!("/api/v1/runs/{run_id}/cancel");
    assert_error(
        call(port, "POST", &cancel, Some(READ), None),
        403,
        "forbidden",
        "needs a token of scope trigger",
    );
    let (status, asked) = call(port, "POST", &cancel, Some(TRIGGER), None);
    assert_eq!(status, 202, "{asked}");
    let (_, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
    assert_eq!(
        rec["reason"], "cancelled by the API on instance api: job stopped",
        "{rec}"
    );
    wait_until(PATIENCE, "the escaped grandchild to be gone", || {
        !running(grandchild)
    });
    // A run that ended cannot be cancelled again; nor one that never was.
    assert_error(
        call(port, "POST", &cancel, Some(TRIGGER), None),
        409,
        "not_running",
        "already ended: cancelled",
    );
    assert_error(
        call(
            port,
            "POST",
            "/api/v1/runs/01a23502-01e4-71d8-91b7-a38fc6a0586e/cancel",
            Some(TRIGGER),
            None,
        ),
        404,
        "unknown_run",
        "no run",
    );
    // The CLI verb: the same engine call, waiting for the record.
    let _ = std::fs::remove_file(env.path("grandchild"));
    let run_id = env.trigger_detached("tree");
    wait_until(PATIENCE, "the second run's running record", || {
        env.records("tree")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "running")
    });
    let out = env.cmd(&["cancel", &run_id]).run().success();
    assert!(
        out.stderr
            .contains(&format!("run {run_id} of \"tree\": cancelled after")),
        "{out:?}"
    );
    let rec = env
        .records("tree")
        .into_iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap();
    assert_eq!(rec["outcome"], "cancelled");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .starts_with("cancelled by bgsched cancel on "),
        "{rec}"
    );
    let out = env.cmd(&["cancel", &run_id]).run().code(1);
    assert_eq!(
        out.stderr,
        format!("bgsched: run {run_id} of job \"tree\" already ended: cancelled\n")
    );
    env.cmd(&["cancel", "01a23502-01e4-71d8-91b7-a38fc6a0586e"])
        .run()
        .code(64);
    env.cmd(&["cancel", "nope"]).run().code(2);
}

/// Lines of the `beat` job's file so far.
fn beats(env: &Env) -> usize {
    env.lines("beats").len()
}

/// Wait for `n` more beats than `since`.
#[track_caller]
fn beats_again(env: &Env, since: usize, n: usize) {
    wait_until(PATIENCE, "the beat job to fire", || beats(env) >= since + n);
}

/// No beat for `secs` (each second is a tick).
#[track_caller]
fn no_beats_for(env: &Env, secs: u64) {
    let before = beats(env);
    std::thread::sleep(Duration::from_secs(secs));
    assert_eq!(beats(env), before, "a paused job fired");
}

#[test]
fn a_pause_holds_across_a_reload_and_a_restart_and_is_one_entry_on_resume() {
    let _serial = serial();
    let (env, mut run, port) = standalone(true);
    beats_again(&env, 0, 1);
    let pause = "/api/v1/jobs/beat/pause";
    assert_error(
        call(port, "POST", pause, Some(TRIGGER), None),
        403,
        "forbidden",
        "needs a token of scope admin; this one has scope trigger",
    );
    assert_error(
        call(
            port,
            "POST",
            pause,
            Some(ADMIN),
            Some(r#"{"until": "2020-01-01T00:00:00Z"}"#),
        ),
        400,
        "bad_request",
        "is not in the future",
    );
    assert_error(
        call(
            port,
            "POST",
            pause,
            Some(ADMIN),
            Some(r#"{"until": "soon"}"#),
        ),
        400,
        "bad_request",
        "is not an RFC 3339 instant",
    );
    assert_error(
        call(port, "POST", "/api/v1/jobs/beet/pause", Some(ADMIN), None),
        404,
        "unknown_job",
        "did you mean \"beat\"?",
    );
    assert_error(
        call(port, "POST", "/api/v1/jobs/beat/resume", Some(ADMIN), None),
        409,
        "not_paused",
        "is not paused",
    );
    let (status, paused) = call(
        port,
        "POST",
        pause,
        Some(ADMIN),
        Some(r#"{"manual": false}"#),
    );
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"]["by"], "the API on instance api");
    assert_error(
        call(port, "POST", pause, Some(ADMIN), None),
        409,
        "already_paused",
        "is already paused",
    );
    // A run started before the pause may still end; then the job is paused.
    let mut view = Value::Null;
    wait_until(PATIENCE, "the job to show paused", || {
        view = call(port, "GET", "/api/v1/jobs/beat", Some(READ), None).1;
        view["state"] == "paused"
    });
    assert_eq!(view["next_run"], Value::Null, "{view}");
    assert_eq!(env.job_view("beat")["paused"]["manual"], false);
    // Manual runs are refused too, as asked, by the API and the CLI.
    assert_error(
        call(port, "POST", "/api/v1/jobs/beat/runs", Some(TRIGGER), None),
        409,
        "paused",
        "with manual runs off",
    );
    env.cmd(&["trigger", "beat"])
        .run()
        .code(75)
        .stderr_has("is paused since");
    no_beats_for(&env, 3);
    // A reload does not undo it...
    let config = std::fs::read_to_string(env.path("jobs.toml")).unwrap();
    env.write(
        "jobs.toml",
        &format!("{config}\n[jobs.added]\nschedule = \"@yearly\"\nshell = \"true\"\n"),
    );
    run.signal(rustix::process::Signal::HUP);
    wait_until(PATIENCE, "the reload", || {
        run.log_text().contains("config reloaded")
    });
    no_beats_for(&env, 2);
    // ...nor a restart after kill -9.
    run.kill9();
    let run = env.spawn_run_with("api2", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    wait_until(PATIENCE, "the new scheduler to lead", || {
        run.log_text().contains("leading")
    });
    no_beats_for(&env, 3);
    let before = beats(&env);
    let (status, resumed) = call(port, "POST", "/api/v1/jobs/beat/resume", Some(ADMIN), None);
    assert_eq!(status, 200, "{resumed}");
    beats_again(&env, before, 2);
    // One `paused` entry for the whole stretch, with its ticks; none missed.
    let recs = env.records("beat");
    let paused: Vec<&Value> = recs.iter().filter(|r| r["outcome"] == "paused").collect();
    assert_eq!(paused.len(), 1, "{recs:#?}");
    assert!(
        paused[0]["missed_ticks"].as_u64().unwrap() >= 8,
        "{:?}",
        paused[0]
    );
    let reason = paused[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("paused by the API on instance api from "),
        "{reason}"
    );
    assert!(
        reason.contains("resumed by the API on instance api2"),
        "{reason}"
    );
    assert!(
        !recs.iter().any(|r| r["outcome"] == "missed"),
        "paused ticks recorded missed: {recs:#?}"
    );
    // The held-back ticks are not caught up.
    assert!(
        !env.lines("beats").iter().any(|l| l.starts_with("catchup")),
        "{:?}",
        env.lines("beats")
    );
}

#[test]
fn a_pause_with_until_ends_by_itself_and_the_job_fires_again() {
    let _serial = serial();
    let (env, _run, port) = standalone(true);
    beats_again(&env, 0, 1);
    let until = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let (status, paused) = call(
        port,
        "POST",
        "/api/v1/jobs/beat/pause",
        Some(ADMIN),
        Some(&format!(r#"{{"until": "{until}"}}"#)),
    );
    assert_eq!(status, 200, "{paused}");
    let before = beats(&env);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(beats(&env), before, "fired while paused");
    beats_again(&env, before, 2);
    wait_until(PATIENCE, "the pause's entry", || {
        env.records("beat").iter().any(|r| {
            r["outcome"] == "paused"
                && r["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("its pause ended by itself")
        })
    });
}

/// The pause lives in etcd: the leader's successor after `kill -9` keeps
/// it, and any replica resumes it.
#[test]
fn in_a_cluster_a_pause_holds_across_a_leader_kill_9_and_any_replica_resumes_it() {
    let _serial = serial();
    let (_etcd, env, mut replicas, ports) = cluster("/pause", &["a", "b", "c"]);
    beats_again(&env, 0, 2);
    let leader = env.list_json()["leader"]["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let li = ["a", "b", "c"].iter().position(|i| **i == leader).unwrap();
    let follower = (li + 1) % 3;
    let (status, paused) = call(
        ports[follower],
        "POST",
        "/api/v1/jobs/beat/pause",
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 200, "{paused}");
    // Manual runs still run unless the pause says otherwise.
    let (status, _) = call(
        ports[follower],
        "POST",
        "/api/v1/jobs/beat/runs",
        Some(TRIGGER),
        None,
    );
    assert_eq!(status, 202);
    std::thread::sleep(Duration::from_millis(1500));
    let before = beats(&env);
    replicas[li].kill9();
    wait_until(PATIENCE, "a new leader", || {
        env.list_json()["leader"]["instance"]
            .as_str()
            .is_some_and(|l| l != leader)
    });
    no_beats_for(&env, 4);
    assert_eq!(beats(&env), before);
    let out = env.cmd(&["resume", "beat"]).run().success();
    assert!(out.stderr.contains("job \"beat\" resumed; "), "{out:?}");
    beats_again(&env, before, 2);
    let lines = env.lines("beats");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("manual")).count(),
        1,
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("catchup")),
        "paused ticks caught up: {lines:?}"
    );
    let recs = history_json(&env, "beat");
    assert_eq!(
        recs.iter().filter(|r| r["outcome"] == "paused").count(),
        1,
        "{recs:#?}"
    );
    assert!(!recs.iter().any(|r| r["outcome"] == "missed"), "{recs:#?}");
    drop(replicas);
}

fn history_json(env: &Env, job: &str) -> Vec<Value> {
    let out = env
        .cmd(&["history", job, "-n", "200", "--json"])
        .run()
        .success();
    serde_json::from_str(&out.stdout).expect("history --json")
}

const TICKER_OUTPUT: &str = "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\n";

/// Follow the ticker's run through `bgsched logs -f` and through the API
/// on `port`: each gets the first line while the run still goes on, and
/// the whole output, exactly, once it has ended.
fn follow_the_ticker(env: &Env, port: u16, run_id: &str) {
    use std::io::{Read, Write};
    let mut logs = env.cmd(&["logs", "-f", run_id]).0;
    logs.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut logs = logs.spawn().expect("spawn logs -f");
    let mut stdout = logs.stdout.take().unwrap();
    let mut request = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        request,
        "GET /api/v1/runs/{run_id}/output?follow=true HTTP/1.0\r\nAuthorization: Bearer {READ}\r\n\r\n"
    )
    .unwrap();
    request.set_read_timeout(Some(PATIENCE)).unwrap();
    // The first line arrives while the run is still running, on both.
    let mut cli = Vec::new();
    let mut api = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&cli).contains("line 1\n") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "logs -f ended early: {:?}",
            String::from_utf8_lossy(&cli)
        );
        cli.extend_from_slice(&buf[..n]);
    }
    while !String::from_utf8_lossy(&api).contains("line 1\n") {
        let n = request.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the API's stream ended early: {:?}",
            String::from_utf8_lossy(&api)
        );
        api.extend_from_slice(&buf[..n]);
    }
    let (_, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}"),
        Some(READ),
        None,
    );
    assert_eq!(
        rec["outcome"], "running",
        "the output came only after the run: {rec}"
    );
    // Then everything, and each ends when the run does.
    stdout.read_to_end(&mut cli).unwrap();
    request.read_to_end(&mut api).unwrap();
    assert!(logs.wait().unwrap().success());
    assert_eq!(String::from_utf8_lossy(&cli), TICKER_OUTPUT);
    let api = String::from_utf8_lossy(&api);
    let (head, body) = api.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert_eq!(body, TICKER_OUTPUT);
    let (_, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}"),
        Some(READ),
        None,
    );
    assert_eq!(rec["outcome"], "success", "{rec}");
    // Without -f: the kept output of the ended run.
    let out = env.cmd(&["logs", run_id]).run().success();
    assert_eq!(out.stdout, TICKER_OUTPUT);
}

#[test]
fn logs_follow_streams_a_live_run_and_ends_with_it() {
    let _serial = serial();
    let (env, _run, port) = standalone(true);
    let (_, accepted) = call(
        port,
        "POST",
        "/api/v1/jobs/ticker/runs",
        Some(TRIGGER),
        None,
    );
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    follow_the_ticker(&env, port, &run_id);
    env.cmd(&["logs", "01a23502-01e4-71d8-91b7-a38fc6a0586e"])
        .run()
        .code(64);
    env.cmd(&["logs", "-f", "nope"]).run().code(2);
}

#[test]
fn in_a_cluster_logs_follow_streams_a_run_on_the_leader_from_another_replica() {
    let _serial = serial();
    let (etcd, env, replicas, ports) = cluster("/follow", &["a", "b"]);
    let follower = if leader_of(&env) == "a" { 1 } else { 0 };
    let (status, accepted) = call(
        ports[follower],
        "POST",
        "/api/v1/jobs/ticker/runs",
        Some(TRIGGER),
        None,
    );
    assert_eq!(status, 202, "{accepted}");
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    follow_the_ticker(&env, ports[follower], &run_id);
    // Nothing followed is left in etcd once the run is recorded.
    let left = common::etcd::kv_range_prefix(&etcd.endpoint(), "/follow/output/").unwrap();
    assert!(left.is_empty(), "{left:?}");
    drop(replicas);
}

/// Ask for a run of `later` with `body` (its `at`); its run id.
#[track_caller]
fn run_later(port: u16, body: &str) -> String {
    let (status, accepted) = call(
        port,
        "POST",
        "/api/v1/jobs/later/runs",
        Some(TRIGGER),
        Some(body),
    );
    assert_eq!(status, 202, "{accepted}");
    accepted["run_id"].as_str().unwrap().to_string()
}

fn in_secs(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[test]
fn a_run_at_a_later_time_fires_once_at_it_across_a_restart() {
    let _serial = serial();
    let (env, mut run, port) = standalone(true);
    let start = "/api/v1/jobs/later/runs";
    assert_error(
        call(
            port,
            "POST",
            start,
            Some(TRIGGER),
            Some(r#"{"at": "2020-01-01T00:00:00Z"}"#),
        ),
        400,
        "bad_request",
        "at 2020-01-01T00:00:00Z is not in the future",
    );
    let far = in_secs(400 * 86_400);
    assert_error(
        call(
            port,
            "POST",
            start,
            Some(TRIGGER),
            Some(&format!(r#"{{"at": "{far}"}}"#)),
        ),
        400,
        "bad_request",
        "is more than a year ahead",
    );
    let at = in_secs(4);
    let run_id = run_later(
        port,
        &format!(r#"{{"at": "{at}", "params": {{"what": "api"}}}}"#),
    );
    let (_, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}"),
        Some(READ),
        None,
    );
    assert_eq!(rec["outcome"], "scheduled", "{rec}");
    assert_eq!(
        env.job_view("later")["scheduled"][0]["run_id"],
        run_id.as_str()
    );
    // The CLI verb: the same call.
    let out = env
        .cmd(&["trigger", "later", "--at", &in_secs(5), "-p", "what=cli"])
        .run()
        .success();
    let cli_id = out.stdout.trim().to_string();
    env.cmd(&["trigger", "later", "--at", "yesterday"])
        .run()
        .code(2);
    // The scheduler dies and another takes over before the time comes.
    run.kill9();
    let run = env.spawn_run_with("api2", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    let (_, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_eq!(rec["params"], json!({"what": "api"}));
    assert_eq!(rec["output_tail"], "later api\n");
    let started =
        chrono::DateTime::parse_from_rfc3339(rec["started_at"].as_str().unwrap()).unwrap();
    let at = chrono::DateTime::parse_from_rfc3339(&at).unwrap();
    assert!(started >= at, "started {started}, before its time {at}");
    assert!(
        started - at < chrono::Duration::seconds(2),
        "started {started}, long after {at}"
    );
    let (_, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{cli_id}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(
        (rec["outcome"].clone(), rec["output_tail"].clone()),
        (json!("success"), json!("later cli\n")),
        "{rec}"
    );
    // Each fired once.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        env.lines("later-ledger").len(),
        2,
        "{:?}",
        env.lines("later-ledger")
    );
    assert!(env.job_view("later")["scheduled"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn in_a_cluster_a_run_at_a_later_time_fires_once_across_a_leader_kill_9() {
    let _serial = serial();
    let (_etcd, env, mut replicas, ports) = cluster("/at", &["a", "b", "c"]);
    let leader = leader_of(&env);
    let li = ["a", "b", "c"].iter().position(|i| **i == leader).unwrap();
    let follower = (li + 1) % 3;
    let at = in_secs(5);
    let run_id = run_later(ports[follower], &format!(r#"{{"at": "{at}"}}"#));
    replicas[li].kill9();
    let (_, rec) = call(
        ports[follower],
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=60s"),
        Some(READ),
        None,
    );
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_ne!(rec["instance"], leader.as_str(), "the dead leader ran it");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        env.lines("later-ledger").len(),
        1,
        "{:?}",
        env.lines("later-ledger")
    );
    drop(replicas);
}

/// The reason a run at a later time cancelled by `by` gets.
fn cancelled_before(by: &str, at: &str) -> String {
    let at = chrono::DateTime::parse_from_rfc3339(at)
        .unwrap()
        .with_timezone(&chrono::Utc);
    format!(
        "cancelled by {by} before its time ({}): not started",
        at.to_rfc3339()
    )
}

/// Past `at` (and a start's worth), the job's ledger is still empty.
#[track_caller]
fn never_started(env: &Env, at: &str) {
    let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
    let until = at + chrono::Duration::seconds(2);
    while chrono::Utc::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(env.lines("later-ledger"), Vec::<String>::new());
}

#[test]
fn a_run_at_a_later_time_cancelled_before_its_time_never_starts_and_is_recorded() {
    let _serial = serial();
    let (env, _run, port) = standalone(true);
    let at = in_secs(3);
    let run_id = run_later(
        port,
        &format!(r#"{{"at": "{at}", "params": {{"what": "api"}}}}"#),
    );
    let cancel = format!("/api/v1/runs/{run_id}/cancel");
    let (status, rec) = call(port, "POST", &cancel, Some(TRIGGER), None);
    assert_eq!(status, 200, "{rec}");
    assert_eq!(
        (
            &rec["run_id"],
            &rec["outcome"],
            &rec["reason"],
            &rec["trigger"],
            &rec["params"]
        ),
        (
            &json!(run_id),
            &json!("cancelled"),
            &json!(cancelled_before("the API on instance api", &at)),
            &json!("manual"),
            &json!({"what": "api"})
        ),
        "{rec}"
    );
    // It is an entry of the job's history now, and no longer scheduled.
    let (_, got) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}"),
        Some(READ),
        None,
    );
    assert_eq!(got["outcome"], "cancelled", "{got}");
    assert!(env.job_view("later")["scheduled"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_error(
        call(port, "POST", &cancel, Some(TRIGGER), None),
        409,
        "not_running",
        "already ended: cancelled",
    );
    // The CLI verb does the same.
    let cli_at = in_secs(3);
    let out = env
        .cmd(&["trigger", "later", "--at", &cli_at, "-p", "what=cli"])
        .run()
        .success();
    let cli_id = out.stdout.trim().to_string();
    let out = env.cmd(&["cancel", &cli_id]).run().success();
    let rec = env
        .records("later")
        .into_iter()
        .find(|r| r["run_id"] == cli_id.as_str())
        .expect("the CLI's cancel is recorded");
    let reason = rec["reason"].as_str().unwrap();
    assert_eq!(
        out.stderr,
        format!("bgsched: run {cli_id} of \"later\": cancelled ({reason})\n")
    );
    assert!(
        reason.starts_with("cancelled by bgsched cancel on ")
            && reason.ends_with(&format!(
                "before its time ({}): not started",
                chrono::DateTime::parse_from_rfc3339(&cli_at)
                    .unwrap()
                    .with_timezone(&chrono::Utc)
                    .to_rfc3339()
            )),
        "{rec}"
    );
    never_started(&env, &cli_at);
}

/// A cancel killed after taking the run away and before recording it.
#[test]
fn a_run_at_a_later_time_taken_by_a_killed_cancel_is_recorded_cancelled() {
    let _serial = serial();
    let (env, _run, _port) = standalone(true);
    let run_id = "01a23e00-0000-7000-8000-000000000001";
    let at = in_secs(2);
    let dir = env.state_dir().join("scheduled");
    std::fs::create_dir_all(&dir).unwrap();
    let taken_at = Instant::now();
    std::fs::write(
        dir.join(format!("{run_id}.cancelling")),
        json!({
            "run_id": run_id,
            "job": "later",
            "requested_by": "bgsched trigger on test",
            "requested_at": in_secs(0),
            "at": at,
        })
        .to_string(),
    )
    .unwrap();
    // A cancel may still be at work on a taken file this young: the leader,
    // looking every second, leaves it to the cancel for 10 s.
    while taken_at.elapsed() < Duration::from_secs(4) {
        assert!(
            !env.records("later").iter().any(|r| r["run_id"] == run_id),
            "recorded {:?} after the take, under a cancel that may still be at work",
            taken_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until(PATIENCE, "the cancelled record", || {
        env.records("later").iter().any(|r| r["run_id"] == run_id)
    });
    assert!(
        taken_at.elapsed() >= Duration::from_secs(10),
        "recorded {:?} after the take",
        taken_at.elapsed()
    );
    let rec = env
        .records("later")
        .into_iter()
        .find(|r| r["run_id"] == run_id)
        .unwrap();
    assert_eq!(
        (&rec["outcome"], &rec["reason"]),
        (
            &json!("cancelled"),
            &json!(cancelled_before(
                "a caller unknown (its cancel stopped before recording the run)",
                &at
            ))
        ),
        "{rec}"
    );
    assert!(!dir.join(format!("{run_id}.cancelling")).exists());
    never_started(&env, &at);
}

#[test]
fn in_a_cluster_a_run_at_a_later_time_cancelled_before_its_time_never_starts() {
    let _serial = serial();
    let (_etcd, env, replicas, ports) = cluster("/at-cancel", &["a"]);
    // Until it is connected to etcd, the API answers 503 "starting".
    leader_of(&env);
    let at = in_secs(3);
    let run_id = run_later(ports[0], &format!(r#"{{"at": "{at}"}}"#));
    let (status, rec) = call(
        ports[0],
        "POST",
        &format!("/api/v1/runs/{run_id}/cancel"),
        Some(TRIGGER),
        None,
    );
    assert_eq!(status, 200, "{rec}");
    assert_eq!(
        (&rec["outcome"], &rec["reason"]),
        (
            &json!("cancelled"),
            &json!(cancelled_before("the API on instance a", &at))
        ),
        "{rec}"
    );
    never_started(&env, &at);
    let (_, got) = call(
        ports[0],
        "GET",
        &format!("/api/v1/runs/{run_id}"),
        Some(READ),
        None,
    );
    assert_eq!(got["outcome"], "cancelled", "{got}");
    drop(replicas);
}

/// A self-signed certificate for 127.0.0.1, made with openssl(1).
fn self_signed(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (env.path("cert.pem"), env.path("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .output()
        .expect("openssl (Debian's openssl; scripts/test installs it)");
    assert!(made.status.success(), "{made:?}");
    (cert, key)
}

#[test]
fn with_cert_file_and_key_file_the_listener_speaks_https_only() {
    let _serial = serial();
    let env = Env::new().config(&format!(
        "{}\n[http]\ntokens_file = \"tokens\"\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n",
        jobs()
    ));
    env.write("tokens", TOKENS);
    let (cert, _) = self_signed(&env);
    env.cmd(&["check"]).run().success();
    let run = env.spawn_run_with("tls", &["--http", "127.0.0.1:0"]);
    const MARK: &str = "/status on https://127.0.0.1:";
    let mut port = 0u16;
    wait_until(PATIENCE, "the https address in the log", || {
        let log = run.log_text();
        port = log
            .find(MARK)
            .map(|at| {
                log[at + MARK.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        port > 0
    });
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .args(["-H", &format!("Authorization: Bearer {READ}")])
        .arg(format!("https://127.0.0.1:{port}/api/v1/jobs/order"))
        .output()
        .expect("curl (Debian's curl; scripts/test installs it)");
    assert!(curl.status.success(), "{curl:?}");
    let job: Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!(job["name"], "order");
    // Plain HTTP on the same port gets no answer.
    let plain = http_request(port, "GET", "/healthz", None, Duration::from_secs(5), &[]);
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");
    // A client that connects and says nothing is let go after the
    // handshake's 10 s, so idle sockets cannot pile up.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let since = std::time::Instant::now();
    let read = std::io::Read::read(&mut idle, &mut [0u8; 64]);
    let waited = since.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_))
            && waited >= Duration::from_secs(9)
            && waited < Duration::from_secs(35),
        "{read:?} after {waited:?}"
    );

    // Files that cannot serve are refused where they are named.
    let env = Env::new().config(&format!("{}\n[http]\ncert_file = \"cert.pem\"\n", jobs()));
    env.cmd(&["check"])
        .run()
        .code(78)
        .stderr_has("cert_file needs key_file too");
    let env = Env::new().config(&format!(
        "{}\n[http]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n",
        jobs()
    ));
    env.write("cert.pem", "not a certificate\n");
    env.write("key.pem", "not a key\n");
    env.cmd(&["check"])
        .run()
        .code(78)
        .stderr_has("no PEM certificate in it");
}

#[test]
fn a_follower_sees_every_attempt_of_a_retried_run_and_a_cancel_between_them_ends_it() {
    let _serial = serial();
    let (env, _run, port) = standalone(true);
    let (_, accepted) = call(
        port,
        "POST",
        "/api/v1/jobs/retried/runs",
        Some(TRIGGER),
        None,
    );
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    let out = env.cmd(&["logs", "-f", &run_id]).run().success();
    assert_eq!(out.stdout, "attempt 1\nattempt 2\n");
    // A cancel while the run waits for its retry ends it cancelled.
    let (_, accepted) = call(
        port,
        "POST",
        "/api/v1/jobs/slowretry/runs",
        Some(TRIGGER),
        None,
    );
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    // The first attempt's process is gone: the run waits for its retry.
    wait_until(PATIENCE, "the first attempt to end", || {
        std::fs::read_to_string(env.path("slowretry-pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .is_some_and(|pid: i32| !running(pid))
    });
    // Between attempts the run's entry is being rewritten: a cancel in that
    // instant is told to try again shortly, as a caller would.
    let mut reply = (0, Value::Null);
    wait_until(PATIENCE, "the cancel accepted", || {
        reply = call(
            port,
            "POST",
            &format!("/api/v1/runs/{run_id}/cancel"),
            Some(TRIGGER),
            None,
        );
        let again = reply.0 == 409
            && reply.1["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("try again shortly"));
        !again
    });
    assert_eq!(reply.0, 202, "{}", reply.1);
    let (_, rec) = call(
        port,
        "GET",
        &format!("/api/v1/runs/{run_id}?wait=30s"),
        Some(READ),
        None,
    );
    assert_eq!(rec["outcome"], "cancelled", "{rec}");
    assert!(
        rec["reason"].as_str().unwrap()
            == "cancelled by the API on instance api before retry 1: not retried",
        "{rec}"
    );
}

#[test]
fn without_tokens_a_non_loopback_listener_is_warned_about() {
    let _serial = serial();
    const WARNING: &str = "the API on a non-loopback address has no [http] tokens_file";
    let env = Env::new().config(&jobs());
    let open = env.spawn_run_with("open", &["--http", "0.0.0.0:0"]);
    open.http_port();
    assert!(open.log_text().contains(WARNING), "{}", open.log_text());
    drop(open);
    drop(env);
    let (env, run, _) = standalone(false);
    assert!(!run.log_text().contains(WARNING), "{}", run.log_text());
    drop(env);
    let env = Env::new().config(&format!("{}\n[http]\ntokens_file = \"tokens\"\n", jobs()));
    env.write("tokens", TOKENS);
    let guarded = env.spawn_run_with("guarded", &["--http", "0.0.0.0:0"]);
    guarded.http_port();
    assert!(
        !guarded.log_text().contains(WARNING),
        "{}",
        guarded.log_text()
    );
}

#[test]
fn a_standalone_run_claimed_but_never_started_is_recorded_lost_after_a_minute() {
    let _serial = serial();
    let env = Env::new().config(&jobs());
    // Kept for later while no scheduler runs, then found claimed and
    // untouched for two minutes, as if the scheduler died between the
    // claim and the start.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = env
        .cmd(&["trigger", "later", "--at", &later])
        .run()
        .success();
    let run_id = out.stdout.trim().to_string();
    let scheduled = env
        .state_dir()
        .join("scheduled")
        .join(format!("{run_id}.json"));
    let requests = env.state_dir().join("requests");
    std::fs::create_dir_all(&requests).unwrap();
    let claimed = requests.join(format!("{run_id}.claimed"));
    std::fs::rename(&scheduled, &claimed).unwrap();
    let two_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&claimed)
        .unwrap()
        .set_modified(two_minutes_ago)
        .unwrap();
    let _run = env.spawn_run("settles");
    let mut lost = None;
    wait_until(PATIENCE, "the lost record", || {
        lost = env
            .records("later")
            .into_iter()
            .find(|r| r["run_id"] == run_id.as_str());
        lost.is_some()
    });
    let lost = lost.unwrap();
    assert_eq!(lost["outcome"], "lost", "{lost}");
    assert!(
        lost["reason"]
            .as_str()
            .unwrap()
            .contains("its supervisor never started"),
        "{lost}"
    );
    assert!(!claimed.exists());
    assert!(env.lines("later-ledger").is_empty(), "it ran after all");
}
