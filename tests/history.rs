//! `bgsched history`: standalone on a state directory, and in a cluster
//! against a real etcd with a real leader.

mod common;

use common::etcd::Etcd;
use common::*;
use serde_json::Value;

const JOBS: &str = "\
[jobs.greet]
schedule = \"@yearly\"
shell = 'echo hello-from-greet; echo line-two; exit 3'

[jobs.quiet]
schedule = \"@yearly\"
command = [\"true\"]
";

fn history_json(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["history", "--json"];
    all.extend_from_slice(args);
    let out = env.cmd(&all).run().success();
    serde_json::from_str::<Vec<Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("history --json is not a JSON array ({e}): {}", out.stdout))
}

#[test]
fn standalone_history_lists_runs_newest_first_and_shows_their_output() {
    let env = Env::new().config(JOBS);
    env.cmd(&["trigger", "greet", "--instance-id", "first"])
        .run()
        .code(3);
    env.cmd(&["trigger", "quiet", "--instance-id", "second"])
        .run()
        .success();
    env.cmd(&["trigger", "greet", "--instance-id", "third"])
        .run()
        .code(3);

    // Across jobs, merged by start time, newest first.
    let all = history_json(&env, &[]);
    let instances: Vec<&str> = all
        .iter()
        .map(|r| r["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances, ["third", "second", "first"], "{all:#?}");
    assert_eq!(all[0]["job"], "greet");
    assert_eq!(all[0]["outcome"], "failed");
    assert_eq!(all[0]["exit_code"], 3);
    assert_eq!(all[0]["trigger"], "manual");
    assert!(all[0]["tick"].is_string() && all[0]["duration_ms"].is_u64());
    assert!(
        all.iter().all(|r| r.get("output_tail").is_none()),
        "the list leaves the output out: {all:#?}"
    );

    // One job; -n limits.
    let greet = history_json(&env, &["greet", "-n", "1"]);
    assert_eq!(greet.len(), 1);
    assert_eq!(greet[0]["instance"], "third");

    // The table names every column and every run.
    let table = env.cmd(&["history"]).run().success();
    for header in [
        "RUN ID", "JOB", "TICK", "TRIGGER", "INSTANCE", "TERM", "STARTED", "DURATION", "OUTCOME",
    ] {
        assert!(table.stdout.contains(header), "{table:?}");
    }
    for rec in &all {
        assert!(
            table.stdout.contains(rec["run_id"].as_str().unwrap()),
            "{table:?}"
        );
    }
    assert!(table.stdout.contains("failed (exit 3)"), "{table:?}");

    // --output prints exactly what the run printed (stdout and stderr).
    let run_id = all[2]["run_id"].as_str().unwrap();
    let out = env.cmd(&["history", "--output", run_id]).run().success();
    assert_eq!(out.stdout, "hello-from-greet\nline-two\n", "{out:?}");
    // With the job named too, and as the whole record.
    let out = env
        .cmd(&["history", "greet", "--output", run_id, "--json"])
        .run()
        .success();
    let rec: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rec["run_id"], run_id);
    assert_eq!(rec["output_tail"], "hello-from-greet\nline-two\n");
    // A run that printed nothing: empty stdout, a note on stderr.
    let quiet_id = all[1]["run_id"].as_str().unwrap();
    let out = env.cmd(&["history", "--output", quiet_id]).run().success();
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("printed nothing"), "{out:?}");
}

#[test]
fn history_output_adds_no_newline_the_job_did_not_print() {
    let env = Env::new().config("[jobs.bare]\nschedule = \"@yearly\"\nshell = 'printf abc'\n");
    env.cmd(&["trigger", "bare"]).run().success();
    let recs = env.records("bare");
    let run_id = recs[0]["run_id"].as_str().unwrap();
    let out = env.cmd(&["history", "--output", run_id]).run().success();
    assert_eq!(out.stdout, "abc", "{out:?}");
}

#[test]
fn standalone_history_shows_a_running_run() {
    let env = Env::new().config(&format!(
        "[jobs.slow]\nschedule = \"@yearly\"\nshell = '{}; sleep 600'\n",
        ledger_line("start", "ledger")
    ));
    let run_id = env.trigger_detached("slow");
    wait_until(PATIENCE, "the run to be recorded as running", || {
        history_json(&env, &["slow"])
            .first()
            .is_some_and(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "running")
    });
    // A tick (here a trigger) that comes while it runs is skipped, and listed.
    env.cmd(&["trigger", "slow"]).run().code(75);
    let slow = history_json(&env, &["slow"]);
    assert_eq!(slow[0]["outcome"], "skipped", "{slow:#?}");
    assert_eq!(slow[1]["run_id"], run_id.as_str(), "{slow:#?}");
    let table = env.cmd(&["history", "slow"]).run().success();
    assert!(table.stdout.contains("so far"), "{table:?}");
    let skip_row = table
        .stdout
        .lines()
        .find(|l| l.contains("skipped"))
        .unwrap_or_else(|| panic!("no skipped row: {table:?}"));
    assert!(
        skip_row.contains(" - "),
        "a skip has no duration: {skip_row}"
    );
    let out = env.cmd(&["history", "--output", &run_id]).run().success();
    assert!(out.stderr.contains("still running"), "{out:?}");
    // Clean up through the recorded pid (the job's process group).
    let pid = history_json(&env, &["slow"])[1]["pid"].as_i64().unwrap() as i32;
    let _ = rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
    wait_until(PATIENCE, "the killed run's record", || {
        history_json(&env, &["slow"])[1]["outcome"] == "killed"
    });
}

#[test]
fn history_of_nothing_yet_is_empty() {
    let env = Env::new().config(JOBS);
    assert!(history_json(&env, &[]).is_empty());
    env.cmd(&["history"]).run().success().stdout_has("RUN ID");
}

#[test]
fn history_bad_input_gives_clear_errors_and_exit_codes() {
    let env = Env::new().config(JOBS);
    env.cmd(&["trigger", "quiet"]).run().success();
    // An unknown job: close matches, exit 64, as for `trigger` and `next`.
    env.cmd(&["history", "greeet"])
        .run()
        .code(64)
        .stderr_has("did you mean \"greet\"");
    // A well-formed run id that is not there: 64.
    env.cmd(&[
        "history",
        "--output",
        "019ab6f2-5c1e-7d3a-9f4b-2c8e1a0d6b37",
    ])
    .run()
    .code(64)
    .stderr_has("no run 019ab6f2-5c1e-7d3a-9f4b-2c8e1a0d6b37");
    // A run of another job than the one named: not found there.
    let quiet_id = history_json(&env, &["quiet"])[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.cmd(&["history", "greet", "--output", &quiet_id])
        .run()
        .code(64)
        .stderr_has("job \"greet\"");
    // Not a run id at all (and never a path): usage, 2.
    for bad in ["../../../etc/passwd", "", "01a2", "quiet"] {
        env.cmd(&["history", "--output", bad])
            .run()
            .code(2)
            .stderr_has("is not a run id");
    }
    // Listing and --output together make no sense.
    env.cmd(&["history", "-n", "3", "--output", &quiet_id])
        .run()
        .code(2);
    env.cmd(&["history", "-n", "many"]).run().code(2);
    // A bad config is a config error, as everywhere.
    env.write(
        "jobs.toml",
        "[jobs.x]\nschedule = \"61 * * * *\"\ncommand = [\"true\"]\n",
    );
    env.cmd(&["history"]).run().code(78);
}

#[test]
fn cluster_history_without_etcd_exits_69() {
    let env = Env::new().config(JOBS);
    env.cmd(&["history", "--etcd", "http://127.0.0.1:1"])
        .run()
        .code(69)
        .stderr_has("cannot reach etcd");
}

#[test]
fn cluster_history_reads_the_records_the_leader_wrote() {
    let etcd = Etcd::start();
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/hist\"\nlease_ttl = \"2s\"\n\n{JOBS}\n[jobs.slow]\nschedule = \"@yearly\"\nshell = 'echo started >> {{dir}}/slow; sleep 30'\n",
        etcd.endpoint()
    ));
    let _leader = env.spawn_run("alpha");
    wait_until(PATIENCE, "alpha to lead", || {
        env.list_json()["leader"]["instance"] == "alpha"
    });
    let term = env.list_json()["leader"]["term"].as_u64().unwrap();
    env.cmd(&["trigger", "greet", "--instance-id", "laptop"])
        .run()
        .code(3);
    env.cmd(&["trigger", "quiet"]).run().success();

    let all = history_json(&env, &[]);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0]["job"], "quiet");
    assert_eq!(all[1]["job"], "greet");
    for rec in &all {
        assert_eq!(rec["instance"], "alpha", "runs on the leader: {rec}");
        assert_eq!(rec["term"], term, "{rec}");
        assert_eq!(rec["trigger"], "manual", "{rec}");
    }
    assert_eq!(all[1]["outcome"], "failed");
    let greet_id = all[1]["run_id"].as_str().unwrap().to_string();
    let out = env.cmd(&["history", "--output", &greet_id]).run().success();
    assert_eq!(out.stdout, "hello-from-greet\nline-two\n", "{out:?}");
    let table = env.cmd(&["history", "greet"]).run().success();
    assert!(table.stdout.contains(&greet_id), "{table:?}");
    assert!(table.stdout.contains(&term.to_string()), "{table:?}");

    // A running run is in the history (from its marker) before its record exists.
    let slow_id = env.trigger_detached("slow");
    wait_until(PATIENCE, "the slow run to start", || {
        !env.lines("slow").is_empty()
    });
    let slow = history_json(&env, &["slow"]);
    assert_eq!(slow.len(), 1, "{slow:#?}");
    assert_eq!(slow[0]["run_id"], slow_id.as_str());
    assert_eq!(slow[0]["outcome"], "running");
    assert_eq!(history_json(&env, &[])[0]["run_id"], slow_id.as_str());
    env.cmd(&["history", "--output", &slow_id])
        .run()
        .success()
        .stderr_has("still running");

    env.cmd(&[
        "history",
        "--output",
        "019ab6f2-5c1e-7d3a-9f4b-2c8e1a0d6b37",
    ])
    .run()
    .code(64);
    env.cmd(&["history", "sloww"]).run().code(64);
}
