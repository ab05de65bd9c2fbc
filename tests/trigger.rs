//! `bgsched trigger`, `next`, `list` and the run outcomes of the executor.

mod common;

use common::*;

#[test]
fn trigger_streams_output_and_returns_the_job_exit_code() {
    let env = Env::new().config(
        "[jobs.fails]\nschedule = \"@daily\"\nshell = 'echo to-stdout; echo to-stderr >&2; exit 7'\n",
    );
    let out = env.cmd(&["trigger", "fails"]).run().code(7);
    // One stream, as the job wrote it (README "Output").
    assert!(out.stdout.contains("to-stdout\nto-stderr\n"), "{out:?}");
    let recs = env.records("fails");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["outcome"], "failed");
    assert_eq!(recs[0]["exit_code"], 7);
    assert_eq!(recs[0]["trigger"], "manual");
    assert!(recs[0]["output_tail"]
        .as_str()
        .unwrap()
        .contains("to-stderr"));
}

#[test]
fn trigger_of_a_running_skip_job_exits_75_and_says_since_when_and_where() {
    let env = Env::new().config(&format!(
        "[jobs.long]\nschedule = \"@daily\"\nshell = '{}; sleep 600'\n",
        ledger_line("start", "ledger")
    ));
    let out = env
        .cmd(&["trigger", "long", "--detach", "--instance-id", "first"])
        .run()
        .success();
    let run_id = out.stdout.trim().to_string();
    assert_eq!(run_id.len(), 36, "detach prints the run id: {out:?}");
    wait_until(PATIENCE, "the detached run to start", || {
        !env.lines("ledger").is_empty()
    });
    wait_until(PATIENCE, "the detached run to be recorded", || {
        env.job_view("long")["state"] == "running"
    });
    let out = env.cmd(&["trigger", "long"]).run().code(75);
    assert!(out.stderr.contains("already running since"), "{out:?}");
    assert!(out.stderr.contains("on instance first"), "{out:?}");
    assert!(out.stderr.contains(&run_id), "{out:?}");
    assert!(env
        .records("long")
        .iter()
        .any(|r| r["outcome"] == "skipped"));
    // Clean up: kill the job's group through its recorded pid.
    let pid = env.job_view("long")["running"][0]["pid"].as_i64().unwrap() as i32;
    let _ = rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
    wait_until(PATIENCE, "the killed run's record", || {
        env.records("long")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "killed")
    });
}

#[test]
fn overlap_allow_lets_runs_overlap() {
    let env = Env::new().config(&format!(
        "[jobs.par]\nschedule = \"@daily\"\noverlap = \"allow\"\nshell = '{}; sleep 600'\n",
        ledger_line("start", "ledger")
    ));
    env.cmd(&["trigger", "par", "--detach"]).run().success();
    env.cmd(&["trigger", "par", "--detach"]).run().success();
    wait_until(PATIENCE, "two concurrent runs", || {
        env.job_view("par")["running"].as_array().unwrap().len() == 2
    });
    for r in env.job_view("par")["running"].as_array().unwrap() {
        let pid = r["pid"].as_i64().unwrap() as i32;
        let _ = rustix::process::kill_process_group(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
}

#[test]
fn a_timed_out_job_and_its_background_grandchild_are_gone_afterwards() {
    let env = Env::new().config(
        "[jobs.hang]\nschedule = \"@daily\"\ntimeout = \"1s\"\nkill_grace = \"1s\"\nshell = 'sleep 1000 & echo $! > {dir}/grandchild; trap \"\" TERM; sleep 1000'\n",
    );
    let out = env.cmd(&["trigger", "hang"]).run().code(124);
    assert!(
        out.stderr.contains("\": timed_out after ") && out.stderr.contains("(timeout 1s)"),
        "{out:?}"
    );
    let pid: i32 = std::fs::read_to_string(env.path("grandchild"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(PATIENCE, "the grandchild to be gone", || !alive(pid));
    assert_eq!(env.records("hang")[0]["outcome"], "timed_out");
}

#[test]
fn leftover_group_members_do_not_outlive_or_block_a_finished_job() {
    let env = Env::new().config(
        "[jobs.bg]\nschedule = \"@daily\"\nshell = 'sleep 1000 & echo $! > {dir}/grandchild; echo done'\n",
    );
    let start = std::time::Instant::now();
    env.cmd(&["trigger", "bg"])
        .run()
        .success()
        .stdout_has("done");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "the grandchild held the output pipe"
    );
    let pid: i32 = std::fs::read_to_string(env.path("grandchild"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(PATIENCE, "the grandchild to be gone", || !alive(pid));
}

#[test]
fn a_command_that_cannot_start_is_a_recorded_failure() {
    let env = Env::new().config(
        "[jobs.missing]\nschedule = \"@daily\"\ncommand = [\"/nonexistent/bin/tool\", \"--x\"]\n\n[jobs.baddir]\nschedule = \"@daily\"\ncommand = [\"true\"]\nworking_dir = \"/nonexistent/dir\"\n",
    );
    env.cmd(&["trigger", "missing"])
        .run()
        .code(127)
        .stderr_has("command not found: /nonexistent/bin/tool");
    env.cmd(&["trigger", "baddir"])
        .run()
        .code(127)
        .stderr_has("working_dir /nonexistent/dir is not a directory");
    assert_eq!(env.records("missing")[0]["outcome"], "start_failed");
}

#[test]
fn a_job_killed_by_a_signal_reports_128_plus_n() {
    let env =
        Env::new().config("[jobs.selfkill]\nschedule = \"@daily\"\nshell = 'kill -USR1 $$'\n");
    env.cmd(&["trigger", "selfkill"]).run().code(128 + 10);
    assert_eq!(env.records("selfkill")[0]["outcome"], "killed");
}

#[test]
fn unknown_job_names_suggest_close_matches() {
    let env =
        Env::new().config("[jobs.nightly-report]\nschedule = \"@daily\"\ncommand = [\"true\"]\n");
    env.cmd(&["trigger", "nightly-reprot"])
        .run()
        .code(64)
        .stderr_has("did you mean \"nightly-report\"");
    env.cmd(&["next", "nighty"])
        .run()
        .code(64)
        .stderr_has("nightly-report");
}

#[test]
fn next_prints_instants_with_the_job_offset_across_dst() {
    let env = Env::new().config(
        "[jobs.berlin]\nschedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\ncommand = [\"true\"]\n",
    );
    let out = env
        .cmd(&[
            "next",
            "berlin",
            "-n",
            "3",
            "--after",
            "2026-03-27T12:00:00Z",
        ])
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    // 2026-03-29 02:30 does not exist in Berlin: it runs right after the gap.
    assert_eq!(
        lines,
        [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-03-30T02:30:00+02:00"
        ]
    );
    let json = env
        .cmd(&[
            "next",
            "berlin",
            "-n",
            "1",
            "--after",
            "2026-03-27T12:00:00Z",
            "--json",
        ])
        .run()
        .success();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["tick"], "2026-03-28T01:30:00Z");
}

#[test]
fn list_shows_schedule_next_last_and_state_without_a_scheduler() {
    let env = Env::new().config(
        "[jobs.a]\nschedule = \"@every 1h\"\ncommand = [\"true\"]\n\n[jobs.off]\nschedule = \"@daily\"\nenabled = false\ncommand = [\"true\"]\n",
    );
    env.cmd(&["trigger", "a"]).run().success();
    let out = env.cmd(&["list"]).run().success();
    assert!(out.stdout.contains("mode: standalone"), "{}", out.stdout);
    assert!(out.stdout.contains("leader: none"), "{}", out.stdout);
    assert!(out.stdout.contains("success"), "{}", out.stdout);
    assert!(out.stdout.contains("disabled"), "{}", out.stdout);
    let v = env.list_json();
    assert_eq!(v["mode"], "standalone");
    assert!(v["leader"].is_null());
    let a = &v["jobs"][0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["state"], "idle");
    assert_eq!(a["last_run"]["outcome"], "success");
    assert!(a["next_run"].as_str().unwrap().ends_with(":00:00+00:00"));
    assert_eq!(v["jobs"][1]["state"], "disabled");
    assert!(v["jobs"][1]["next_run"].is_null());
}

#[test]
fn history_is_bounded_by_the_retention_limit() {
    let env = Env::new().config(
        "[scheduler]\nhistory = 3\n[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\n",
    );
    for _ in 0..5 {
        env.cmd(&["trigger", "a"]).run().success();
    }
    assert_eq!(env.records("a").len(), 3);
}

/// README "Parameters": declared ones reach the job as variables and as one
/// JSON file, and the record keeps them; anything else is refused with
/// exit 2 before a run starts.
#[test]
fn trigger_passes_declared_parameters_and_refuses_the_rest() {
    let env = Env::new().config(
        r#"[jobs.order]
schedule = "@yearly"
shell = 'echo "id=$BGSCHED_PARAM_ORDER_ID mode=$BGSCHED_PARAM_MODE file=$(cat "$BGSCHED_PARAMS_FILE" | tr -d " \n")"; stat -c %a "$BGSCHED_PARAMS_FILE"; echo "$BGSCHED_PARAMS_FILE" > where'
[jobs.order.params]
order_id = { required = true, pattern = "[0-9]+" }
mode = { default = "fast", pattern = "fast|slow" }
"#,
    );
    let out = env
        .cmd(&["trigger", "order", "--param", "order_id=42"])
        .run()
        .success();
    assert!(
        out.stdout
            .contains("id=42 mode=fast file={\"mode\":\"fast\",\"order_id\":\"42\"}\n600\n"),
        "{out:?}"
    );
    let file = std::fs::read_to_string(env.path("where")).unwrap();
    assert!(
        !std::path::Path::new(file.trim()).exists(),
        "the parameters file outlived its run: {file}"
    );
    let recs = env.records("order");
    assert_eq!(recs.len(), 1);
    assert_eq!(
        recs[0]["params"],
        serde_json::json!({"order_id": "42", "mode": "fast"})
    );
    let table = env.cmd(&["history", "order"]).run().success().stdout;
    let (head, row) = table.split_once('\n').unwrap();
    assert!(head.trim_end().ends_with("OUTCOME  PARAMS"), "{table}");
    assert!(
        row.trim_end().ends_with("success  mode=fast order_id=42"),
        "{table}"
    );
    for (args, says) in [
        (
            vec!["-p", "order_id=4x2"],
            "bgsched: parameter \"order_id\" = \"4x2\" does not match its pattern \"[0-9]+\"\n",
        ),
        // The pattern must match the whole value, not a part of it.
        (
            vec!["-p", "order_id=1; rm -rf /"],
            "bgsched: parameter \"order_id\" = \"1; rm -rf /\" does not match its pattern \"[0-9]+\"\n",
        ),
        (vec![], "bgsched: job \"order\" requires parameter \"order_id\"\n"),
        (
            vec!["-p", "order_id=1", "-p", "PATH=/tmp"],
            "bgsched: job \"order\" has no parameter \"PATH\"; it declares mode, order_id\n",
        ),
    ] {
        let mut argv = vec!["trigger", "order"];
        argv.extend(args);
        let out = env.cmd(&argv).run().code(2);
        assert_eq!(out.stderr, says, "{argv:?}");
    }
    assert_eq!(
        env.records("order").len(),
        1,
        "a refused trigger recorded a run"
    );
}

/// README "Retries": a retried run's failed attempts are entries of their
/// own, and the run's record is its final attempt's: that is the job's
/// last run in `list`, not the newer entry of an earlier attempt.
#[test]
fn list_shows_a_retried_runs_final_attempt_as_its_last_run() {
    let env = Env::new().config(
        "[jobs.flaky]\nschedule = \"@yearly\"\nretries = 2\nretry_backoff = \"100ms\"\n\
         shell = 'exit $((10 + BGSCHED_ATTEMPT))'\n",
    );
    env.cmd(&["trigger", "flaky"]).run().code(13);
    let last = &env.job_view("flaky")["last_run"];
    assert_eq!(last["attempt"], 3, "{last}");
    assert_eq!(last["exit_code"], 13, "{last}");
    assert_ne!(last["retried"], true, "{last}");
}

/// README "Output": a foreground `trigger` copies the job's output to its
/// stdout as the job wrote it: a carriage return, bytes that are not
/// UTF-8, a line longer than the log's 16 KiB cut and a last line without
/// a newline all arrive unchanged.
#[test]
fn a_foreground_trigger_copies_the_jobs_output_byte_for_byte() {
    let env = Env::new().config(
        "[jobs.raw]\nschedule = \"@yearly\"\n\
         shell = 'printf \"a\\r\\nb\\377\\376\\n\"; head -c 20000 /dev/zero | tr \"\\000\" x; printf end'\n",
    );
    let out = env
        .cmd(&["trigger", "raw"])
        .spawn()
        .wait_with_output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = out.stdout;
    let mut want = b"a\r\nb\xff\xfe\n".to_vec();
    want.extend(std::iter::repeat_n(b'x', 20_000));
    want.extend(b"end");
    assert!(
        got == want,
        "{} bytes, starting {:?}, ending {:?}",
        got.len(),
        String::from_utf8_lossy(&got[..got.len().min(12)]),
        String::from_utf8_lossy(&got[got.len().saturating_sub(12)..])
    );
}
