//! The etcd password against a real etcd with authentication enabled: it
//! reaches no process but the scheduler (where the user put it) — not the
//! supervisor's environment, not the job, its retries or its `on_failure`
//! hook — and so no output: not the log, `history --output`, `list --json`,
//! `/status` or the history stored in etcd. A wrong password is reported as
//! an authentication failure, exit 77, by `run`, `list` and `trigger`.

mod common;

use common::etcd::Etcd;
use common::*;
use rustix::process::Signal;
use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

const USER: &str = "bgsched";
const PASSWORD: &str = "pw-4d1c9e-never-anywhere";
const PASSWORD_VAR: &str = "BGSCHED_TEST_ETCD_PW";

fn config(etcd: &Etcd, jobs: &str) -> String {
    format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/secrets\"\nlease_ttl = \"3s\"\nuser = \"{USER}\"\npassword_env = \"{PASSWORD_VAR}\"\n\n{jobs}",
        etcd.endpoint()
    )
}

/// Every process whose parent chain leads to `root`.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent = HashMap::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        {
            if let Some(ppid) = parent_of(pid) {
                parent.insert(pid, ppid);
            }
        }
    }
    parent
        .keys()
        .copied()
        .filter(|pid| {
            let mut p = *pid;
            while let Some(&up) = parent.get(&p) {
                if up == root {
                    return true;
                }
                p = up;
            }
            false
        })
        .collect()
}

fn environ(pid: i32) -> String {
    String::from_utf8_lossy(&fs::read(format!("/proc/{pid}/environ")).unwrap_or_default())
        .into_owned()
}

/// `bgsched run` with `password` in the variable the config names,
/// logging to `<dir>/<log>`.
fn spawn_run(env: &Env, password: &str, log: &str) -> Scheduler {
    let log = env.path(log);
    let mut cmd = env
        .cmd(&["run", "--instance-id", "a", "--http", "127.0.0.1:0"])
        .env(PASSWORD_VAR, password)
        // A copy under another name is stripped too.
        .env("ANOTHER_COPY_OF_IT", password)
        .0;
    cmd.stdout(fs::File::create(&log).unwrap())
        .stderr(fs::OpenOptions::new().append(true).open(&log).unwrap());
    Scheduler {
        child: cmd.spawn().expect("spawn bgsched run"),
        log,
        instance: "a".into(),
    }
}

/// The job prints its environment, records its pid, stays a moment (to be
/// looked at) and fails, so that it is retried once and its hook runs; the
/// hook does the same.
const JOBS: &str = "\
[jobs.leaky]
schedule = \"@every 1s\"
retries = 1
retry_backoff = \"100ms\"
shell = '''[ -e {dir}/hooked ] && exit 0; env; echo $$ >> {dir}/job-pids; echo $PPID >> {dir}/supervisor-pids; sleep 1; exit 1'''
on_failure = [\"sh\", \"-c\", \"env; echo $$ > {dir}/hook-pid; sleep 1; touch {dir}/hooked\"]
";

#[test]
fn the_etcd_password_reaches_no_child_and_no_output() {
    let etcd = Etcd::start_with_auth(USER, PASSWORD);
    let env = Env::new().config(&config(&etcd, JOBS));
    let mut run = spawn_run(&env, PASSWORD, "run.log");
    let port = run.http_port();

    // While the job, its retry and then its hook run, look at every process
    // below the scheduler.
    let mut seen = HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    while !env.path("hooked").exists() {
        assert!(
            Instant::now() < deadline,
            "the hook never ran:\n{}",
            run.log_text()
        );
        for pid in descendants(run.pid()) {
            let e = environ(pid);
            if !e.is_empty() {
                seen.insert(pid, e);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let job_pids = pids(&env.lines("job-pids"));
    let hook_pid = pids(&env.lines("hook-pid"));
    assert!(
        job_pids.len() >= 2,
        "the job and its retry ran: {job_pids:?}"
    );
    for pid in job_pids.iter().chain(&hook_pid) {
        assert!(seen.contains_key(pid), "pid {pid} was looked at: {seen:?}");
    }
    for pid in pids(&env.lines("supervisor-pids")) {
        assert!(
            seen.contains_key(&pid),
            "supervisor {pid} was looked at: {seen:?}"
        );
    }
    for (pid, e) in &seen {
        assert!(
            !e.contains(PASSWORD),
            "the password is in /proc/{pid}/environ: {e}"
        );
        assert!(
            !e.contains("BGSCHED_SUPERVISE_SPEC="),
            "a run spec in /proc/{pid}/environ"
        );
    }
    // The scheduler itself has it: where the user put it.
    assert!(environ(run.pid()).contains(PASSWORD));

    // Every output.
    let pw = |cmd: &[&str]| env.cmd(cmd).env(PASSWORD_VAR, PASSWORD).run().success();
    let mut outputs = vec![
        ("list --json", pw(&["list", "--json"]).stdout),
        ("history --json", pw(&["history", "--json"]).stdout),
        ("/status", http_get(port, "/status").expect("/status").1),
    ];
    let history: Vec<serde_json::Value> =
        serde_json::from_str(&outputs[1].1).expect("history --json");
    let mut printed_env = false;
    for rec in &history {
        let id = rec["run_id"].as_str().unwrap();
        let out = pw(&["history", "--output", id]).stdout;
        printed_env |=
            out.contains(&format!("{PASSWORD_VAR}=")) || out.contains("BGSCHED_JOB=leaky");
        outputs.push(("history --output", out));
    }
    assert!(
        printed_env,
        "the job's env output is in the history: {history:?}"
    );
    for (key, value) in etcd.dump_as(USER, PASSWORD) {
        outputs.push(("etcd", format!("{key} = {value}")));
    }
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    let log = run.log_text();
    assert!(
        log.contains("BGSCHED_JOB=leaky"),
        "the job's env is logged:\n{log}"
    );
    outputs.push(("the scheduler's log", log));
    for (what, text) in &outputs {
        assert!(
            !text.contains(PASSWORD),
            "the password is in {what}:\n{text}"
        );
    }
}

fn pids(lines: &[String]) -> Vec<i32> {
    lines.iter().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn a_wrong_password_is_an_authentication_failure_exit_77_for_every_command() {
    let etcd = Etcd::start_with_auth(USER, PASSWORD);
    let env = Env::new().config(&config(
        &etcd,
        "[jobs.a]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n",
    ));
    let check = |what: &str, out: &Out| {
        assert!(
            out.stderr.contains("authentication failed") && out.stderr.contains(&etcd.endpoint()),
            "{what}: {out:?}"
        );
        assert!(
            out.stderr.contains(&format!("user \"{USER}\"")),
            "{what}: {out:?}"
        );
        for dump in [
            "Status {",
            "GRpcStatus",
            "Error {",
            "panicked",
            "wrong-password",
        ] {
            assert!(!out.stderr.contains(dump), "{what}: {out:?}");
        }
    };
    for args in [
        &["list"][..],
        &["list", "--json"],
        &["trigger", "a"],
        &["history"],
    ] {
        let out = env
            .cmd(args)
            .env(PASSWORD_VAR, "wrong-password")
            .run()
            .code(77);
        check(&args.join(" "), &out);
    }
    // `run` fails fast instead of retrying forever as if etcd were down.
    let mut run = spawn_run(&env, "wrong-password", "run.log");
    assert_eq!(run.wait_exit(PATIENCE), Some(77), "{}", run.log_text());
    let out = Out {
        code: Some(77),
        stdout: String::new(),
        stderr: run.log_text(),
    };
    check("run", &out);
    // The right password works (so the failure above was the password's).
    env.cmd(&["list"])
        .env(PASSWORD_VAR, PASSWORD)
        .run()
        .success();

    // An unknown user: the same.
    let stranger = Env::new().config(
        &config(
            &etcd,
            "[jobs.a]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n",
        )
        .replace(&format!("user = \"{USER}\""), "user = \"nobody\""),
    );
    stranger
        .cmd(&["list"])
        .env(PASSWORD_VAR, PASSWORD)
        .run()
        .code(77)
        .stderr_has("authentication failed")
        .stderr_has("as user \"nobody\"");

    // No user at all against an etcd that requires one: said so, also 77.
    let anonymous = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\n\n[jobs.a]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n",
        etcd.endpoint()
    ));
    anonymous
        .cmd(&["list"])
        .run()
        .code(77)
        .stderr_has("etcd requires authentication; set user and password_env");
}

/// A leader whose login etcd starts refusing (here: its user's password
/// changed under it) does not exit: it logs the refusal at ERROR and keeps
/// retrying, as in an etcd outage.
#[test]
fn a_login_refused_later_is_logged_and_retried_not_fatal() {
    let etcd = Etcd::start_with_auth(USER, PASSWORD);
    let env = Env::new().config(&config(
        &etcd,
        "[jobs.a]\nschedule = \"@every 1s\"\nshell = 'echo $BGSCHED_RUN_ID >> {dir}/runs'\n",
    ));
    let mut run = spawn_run(&env, PASSWORD, "run.log");
    wait_until(PATIENCE, "two runs", || env.lines("runs").len() >= 2);
    let body = format!(r#"{{"name":"root","password":"{PASSWORD}"}}"#);
    let (_, reply) = common::etcd::http(
        etcd.client_port(),
        "POST",
        "/v3/auth/authenticate",
        Some(&body),
    )
    .expect("authenticate as root");
    let token: serde_json::Value = serde_json::from_str(&reply).expect("token reply");
    let token = token["token"].as_str().expect("a token").to_string();
    let changed = common::etcd::http_request(
        etcd.client_port(),
        "POST",
        "/v3/auth/user/changepw",
        Some(&format!(r#"{{"name":"{USER}","password":"rotated"}}"#)),
        PATIENCE,
        &[("Authorization", &token)],
    );
    assert!(matches!(changed, Ok((200, _))), "changepw: {changed:?}");
    let refused = |log: &str| {
        log.lines()
            .filter(|l| l.contains("ERROR") && l.contains("auth"))
            .count()
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    // One ERROR per streak of failing claims, then the retries go on:
    // ticks keep coming due and are recorded missed while it is refused.
    let retrying = |log: &str| {
        log.lines()
            .filter(|l| l.contains("ticks missed") && l.contains("claims kept failing"))
            .count()
    };
    while refused(&run.log_text()) < 1 || retrying(&run.log_text()) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for refused requests to be logged at ERROR:\n{}",
            run.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "run exited on a refused login:\n{}",
        run.log_text()
    );
}
