//! What the commands print and how they end: a reader that goes away,
//! colour only at a terminal, the words of etcd errors, one form for each
//! kind of value.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// Enough jobs that `list` prints far more than a pipe buffer holds.
fn many_jobs(n: usize) -> String {
    (0..n)
        .map(|i| format!("[jobs.job-with-a-long-name-{i:05}]\nschedule = \"*/5 * * * *\"\ncommand = [\"true\"]\n\n"))
        .collect()
}

/// Start `args`, read one line of its stdout, close the pipe, and check
/// that it ended quietly.
fn reader_goes_away(env: &Env, args: &[&str]) {
    let mut child = env.cmd(args).spawn();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read a line");
    assert!(!first.is_empty(), "{args:?} printed nothing");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{args:?} with a closed stdout: {stderr}"
    );
    assert_ne!(out.status.code(), Some(101), "{args:?}: {:?}", out.status);
    // As cat(1) ends: by SIGPIPE, which shells do not report.
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "{args:?}: {:?} {stderr}",
        out.status
    );
}

fn libc_sigpipe() -> i32 {
    rustix::process::Signal::PIPE.as_raw()
}

#[test]
fn next_ends_quietly_when_its_reader_goes_away() {
    let env = Env::new().config("[jobs.a]\nschedule = \"* * * * * *\"\ncommand = [\"true\"]\n");
    reader_goes_away(&env, &["next", "a", "-n", "10000"]);
}

#[test]
fn list_ends_quietly_when_its_reader_goes_away() {
    let env = Env::new().config(&many_jobs(2000));
    reader_goes_away(&env, &["list"]);
}

#[test]
fn check_ends_quietly_when_its_reader_goes_away() {
    let env = Env::new().config(&many_jobs(2000));
    reader_goes_away(&env, &["check"]);
}

/// `trigger` keeps its job running and reports its outcome even when the
/// reader of its stdout is gone (the job's output still goes to the record).
#[test]
fn trigger_outlives_a_closed_stdout() {
    let env = Env::new().config(
        "[jobs.a]\nschedule = \"@yearly\"\nshell = 'echo first; seq 1 200000; echo done > {dir}/done'\n",
    );
    let mut child = env.cmd(&["trigger", "a"]).spawn();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read a line");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(env.lines("done"), ["done"]);
}

/// Runs `trigger` (which logs at every level) with stderr a pipe.
fn trigger_stderr(env: &Env, no_color: Option<&str>) -> String {
    let mut cmd = env.cmd(&["trigger", "a"]);
    if let Some(v) = no_color {
        cmd = cmd.env("NO_COLOR", v);
    }
    cmd.run().success().stderr
}

const ONE_JOB: &str = "[jobs.a]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n";

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let env = Env::new().config(ONE_JOB);
    for no_color in [None, Some("1")] {
        let stderr = trigger_stderr(&env, no_color);
        assert!(stderr.contains("INFO"), "no log lines to check: {stderr}");
        assert!(
            !stderr.contains('\x1b'),
            "NO_COLOR={no_color:?}: escape codes in {stderr:?}"
        );
    }
}

/// At a terminal (script(1) gives the command one) the log is coloured
/// unless `NO_COLOR` is set and not empty.
#[test]
fn logs_at_a_terminal_are_coloured_unless_no_color() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: script(1) (util-linux) is not installed, so no terminal to test with");
        return;
    }
    let env = Env::new().config(ONE_JOB);
    let at_terminal = |no_color: Option<&str>| {
        let line = format!(
            "{BIN} --config {} --state-dir {} trigger a",
            env.path("jobs.toml").display(),
            env.state_dir().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env("BGSCHED_LOG", "debug")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().expect("run script");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = at_terminal(None);
    assert!(
        coloured.contains("\x1b["),
        "no colour at a terminal: {coloured:?}"
    );
    let empty = at_terminal(Some(""));
    assert!(
        empty.contains("\x1b["),
        "NO_COLOR=\"\" must not count: {empty:?}"
    );
    let plain = at_terminal(Some("1"));
    assert!(plain.contains("INFO"), "{plain:?}");
    assert!(!plain.contains('\x1b'), "NO_COLOR=1: {plain:?}");
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn says_refused_in_words(what: &str, text: &str, endpoint: &str) {
    assert!(
        text.contains("connection refused") && text.contains(endpoint),
        "{what}: no \"connection refused\" and {endpoint}: {text}"
    );
    for dump in ["tonic::", "Os {", "code:", "ConnectError"] {
        assert!(
            !text.contains(dump),
            "{what}: debug text {dump:?} in {text}"
        );
    }
}

#[test]
fn etcd_that_refuses_connections_is_named_and_said_in_words() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let env = Env::new().config(ONE_JOB);
    for args in [&["list"][..], &["trigger", "a"], &["history"]] {
        let mut full = vec!["--etcd", endpoint.as_str()];
        full.extend_from_slice(args);
        // Info level: the debug log keeps the detail on purpose.
        let out = env.cmd(&full).env("BGSCHED_LOG", "info").run().code(69);
        says_refused_in_words(&format!("{args:?}"), &out.stderr, &endpoint);
    }
    let run = env.spawn_run_with("a", &["--etcd", &endpoint]);
    let mut log = String::new();
    wait_until(PATIENCE, "run to log that etcd refuses", || {
        log = run.log_text();
        log.contains("unreachable")
    });
    let line = log
        .lines()
        .find(|l| l.contains("unreachable"))
        .expect("the line");
    says_refused_in_words("run", line, &endpoint);
    assert!(!line.contains("(etcd: "), "etcd said once: {line}");
}

/// README's command table: `next -n` takes at most 10,000; a larger count
/// is a usage error in words, not an allocation that aborts the process.
#[test]
fn next_refuses_a_count_over_10000_as_a_usage_error() {
    for huge in ["10001", "99999999999", "18446744073709551615"] {
        Test::new()
            .config(ENDING)
            .args(&["next", "monthly", "-n", huge])
            .status(2)
            .stderr_has("invalid value")
            .stderr_has("-n <COUNT>")
            .run();
    }
    let out = Test::new()
        .config(ENDING)
        .args(&[
            "next",
            "monthly",
            "-n",
            "10000",
            "--after",
            "2026-01-01T00:00:00Z",
        ])
        .stdout_has("2026-02-01T00:00:00+00:00\n")
        .stdout_has("2859-05-01T00:00:00+00:00\n")
        .run();
    assert_eq!(out.stdout.lines().count(), 10_000);
}

/// README "Schedules": 7 fields have a trailing year; once the years are
/// over, `next` says so rather than printing fewer lines without a word.
const ENDING: &str = "[jobs.two]\nschedule = \"0 0 12 1 1 * 2030,2032\"\ncommand = [\"true\"]\n\n\
     [jobs.monthly]\nschedule = \"0 0 0 1 * * *\"\ncommand = [\"true\"]\n";

#[test]
fn next_says_when_a_schedule_has_no_further_fire() {
    Test::new()
        .config(ENDING)
        .args(&["next", "two", "-n", "5", "--after", "2026-01-01T00:00:00Z"])
        .stdout("2030-01-01T12:00:00+00:00\n2032-01-01T12:00:00+00:00\n")
        .stderr("bgsched: job \"two\" has no fire after 2032-01-01T12:00:00+00:00: its years (2030,2032) are over\n")
        .run();
    Test::new()
        .config(ENDING)
        .args(&["next", "two", "--after", "2032-06-01T00:00:00Z", "--json"])
        .stdout("[]\n")
        .stderr("bgsched: job \"two\" has no fire after 2032-06-01T00:00:00+00:00: its years (2030,2032) are over\n")
        .run();
    // All that was asked for: no note.
    Test::new()
        .config(ENDING)
        .args(&["next", "two", "-n", "2", "--after", "2026-01-01T00:00:00Z"])
        .stdout("2030-01-01T12:00:00+00:00\n2032-01-01T12:00:00+00:00\n")
        .run();
    Test::new()
        .config(ENDING)
        .args(&[
            "next",
            "monthly",
            "-n",
            "3",
            "--after",
            "2026-01-01T00:00:00Z",
        ])
        .stdout("2026-02-01T00:00:00+00:00\n2026-03-01T00:00:00+00:00\n2026-04-01T00:00:00+00:00\n")
        .run();
}

/// README "Output forms": outcome names are the records' snake_case names
/// in the log, `trigger`'s summary, `BGSCHED_OUTCOME` and the record.
/// A schedule whose years are over has ended; it is not a config error
/// (README "Schedules"): the file loads, the others fire.
#[test]
fn a_schedule_whose_years_are_over_is_a_warning_and_the_other_jobs_fire() {
    let env = Env::new().config(&format!(
        "[jobs.past]\nschedule = \"0 0 12 1 1 * 2020,2021\"\ncommand = [\"true\"]\n\n\
         [jobs.live]\nschedule = \"@every 1s\"\nshell = '{}'\n",
        ledger_line("live", "ledger")
    ));
    let warning = "job \"past\": schedule \"0 0 12 1 1 * 2020,2021\" has ended: its last fire was 2021-01-01T12:00:00+00:00; it never fires again";
    let out = env.cmd(&["check"]).run().success();
    assert_eq!(out.stderr, format!("bgsched: warning: {warning}\n"));
    assert!(out.stdout.contains("never fires again"), "{out:?}");

    let list = env.list_json();
    let past = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "past")
        .unwrap_or_else(|| panic!("{list:#}"));
    assert!(past["next_run"].is_null(), "{past:#}");
    let table = env.cmd(&["list"]).run().success().stdout;
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("past "))
        .unwrap_or_else(|| panic!("{table}"));
    let next_run = row.split("(UTC)").nth(1).unwrap_or_default().trim_start();
    assert!(next_run.starts_with("never "), "{row}");

    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the other job to fire", || {
        !env.lines("ledger").is_empty()
    });
    run.signal(rustix::process::Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    let log = run.log_text();
    let said: Vec<&str> = log.lines().filter(|l| l.contains(warning)).collect();
    assert!(said.len() == 1 && said[0].contains("WARN"), "{log}");
}

#[test]
fn outcome_names_are_the_record_names_everywhere() {
    let env = Env::new().config(
        "[jobs.slow]\nschedule = \"@yearly\"\nshell = 'sleep 30'\ntimeout = \"1s\"\n\
         on_failure = [\"sh\", \"-c\", \"echo $BGSCHED_OUTCOME > {dir}/outcome\"]\n\n\
         [jobs.missing]\nschedule = \"@yearly\"\ncommand = [\"{dir}/no-such-program\"]\n",
    );
    let out = env.cmd(&["trigger", "slow"]).run().code(124);
    let summary = out
        .stderr
        .lines()
        .find(|l| l.starts_with("bgsched: run "))
        .unwrap_or_else(|| panic!("no summary: {}", out.stderr));
    let run_id = &env.records("slow")[0]["run_id"];
    let prefix = format!(
        "bgsched: run {} of \"slow\": timed_out after ",
        run_id.as_str().unwrap()
    );
    assert!(
        summary.starts_with(&prefix) && summary.ends_with("s (timeout 1s)"),
        "{summary}"
    );
    assert!(out.stderr.contains("outcome=timed_out"), "{}", out.stderr);
    assert_eq!(env.records("slow")[0]["outcome"], "timed_out");
    assert_eq!(env.lines("outcome"), ["timed_out"]);

    let out = env.cmd(&["trigger", "missing"]).run().code(127);
    assert!(
        out.stderr.contains("outcome=start_failed"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("\": start_failed"), "{}", out.stderr);
    assert_eq!(env.records("missing")[0]["outcome"], "start_failed");
}

/// README "Output forms": `list` shows NEXT RUN and LAST RUN in the job's
/// zone with its offset.
#[test]
fn list_shows_next_and_last_run_in_the_jobs_zone() {
    let env = Env::new().config(
        "[jobs.a]\nschedule = \"0 3 * * *\"\ntimezone = \"Asia/Kolkata\"\ncommand = [\"true\"]\n",
    );
    env.cmd(&["trigger", "a"]).run().success();
    let list = env.cmd(&["list"]).run().success().stdout;
    let row = list
        .lines()
        .find(|l| l.trim_start().starts_with("a "))
        .unwrap_or_else(|| panic!("no row: {list}"));
    assert_eq!(row.matches("+05:30").count(), 2, "{row}");
    assert!(row.contains(":00+05:30 (in "), "NEXT RUN: {row}");
    assert!(row.contains("+05:30) success in "), "LAST RUN: {row}");
    assert!(!row.contains("Z)"), "{row}");
}

/// README "Output forms": a manual tick is to the millisecond in records,
/// logs and `BGSCHED_SCHEDULED_AT`, as in a cluster; a run outside any term
/// has no `term` in the log (history shows `-`).
#[test]
fn a_standalone_manual_tick_is_milliseconds_and_no_term_is_omitted() {
    let env = Env::new().config(
        "[jobs.a]\nschedule = \"@yearly\"\nshell = 'echo $BGSCHED_SCHEDULED_AT > {dir}/at'\n",
    );
    let out = env.cmd(&["trigger", "a"]).run().success();
    let rec = &env.records("a")[0];
    let tick: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(rec["tick"].clone()).expect("tick");
    assert_eq!(tick.timestamp_subsec_nanos() % 1_000_000, 0, "{rec}");
    let millis = tick.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(env.lines("at"), [millis]);
    let started = out
        .stderr
        .lines()
        .find(|l| l.contains("run started"))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(
        started.contains(&format!("tick={}", tick.to_rfc3339())),
        "{started}"
    );
    assert!(!started.contains("term="), "{started}");
    let history = env.cmd(&["history"]).run().success().stdout;
    let cells: Vec<&str> = history
        .lines()
        .nth(1)
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    // RUN ID, JOB, TICK, TRIGGER, INSTANCE, TERM, STARTED, DURATION, OUTCOME.
    let tick_cell = tick.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    assert_eq!(cells.get(2), Some(&tick_cell.as_str()), "{history}");
    assert_eq!(cells.get(5), Some(&"-"), "{history}");
    // JSON says "no term" as the table does: null, not a token 0.
    let out = env.cmd(&["history", "--json"]).run().success().stdout;
    let json: serde_json::Value = serde_json::from_str(&out).expect("history --json");
    assert_eq!(json[0]["term"], serde_json::Value::Null, "{json:#}");
    let list = env.list_json();
    assert_eq!(
        list["jobs"][0]["last_run"]["term"],
        serde_json::Value::Null,
        "{list:#}"
    );
    let took = rec["duration_ms"].as_u64().expect("duration_ms");
    let took = humantime::format_duration(std::time::Duration::from_millis(took)).to_string();
    assert_eq!(cells.get(7), Some(&took.as_str()), "{history}");

    let out = env
        .cmd(&["--log-format", "json", "trigger", "a"])
        .run()
        .success();
    let started: serde_json::Value = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "run started")
        .unwrap_or_else(|| panic!("{}", out.stderr));
    assert!(started.get("term").is_none(), "{started}");
}

/// `run --label KEY=VALUE`: a malformed one is a usage error in words
/// (exit 2), before any config is read.
#[test]
fn run_refuses_a_malformed_label_as_a_usage_error() {
    for (label, says) in [
        ("bad", "expected KEY=VALUE, found \"bad\""),
        ("=a", "label name \"\" must not be empty"),
        ("zone=", "label value \"\" must not be empty"),
        (
            "zone=eu west",
            "label value \"eu west\" may hold only ASCII letters, digits, '.', '_' and '-', found ' '",
        ),
        (
            "my/zone=a",
            "label name \"my/zone\" may hold only ASCII letters, digits, '.', '_' and '-', found '/'",
        ),
    ] {
        Test::new()
            .args(&["run", "--label", "zone=a", "--label", label])
            .status(2)
            .stderr_has(&format!("invalid value '{label}' for '--label <KEY=VALUE>': {says}"))
            .run();
    }
}

/// `list --json` says each job's `run_on`: `"leader"`, `"any"` or
/// `{"labels": {...}}`.
#[test]
fn list_json_has_each_jobs_run_on() {
    let env = Env::new().config(
        "[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\n\n\
         [jobs.b]\nschedule = \"@daily\"\ncommand = [\"true\"]\nrun_on = \"any\"\n\n\
         [jobs.c]\nschedule = \"@daily\"\ncommand = [\"true\"]\nrun_on = { labels = { zone = \"a\", gpu = \"yes\" } }\n",
    );
    let list = env.list_json();
    let run_on: Vec<&serde_json::Value> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["run_on"])
        .collect();
    assert_eq!(
        run_on,
        [
            &serde_json::json!("leader"),
            &serde_json::json!("any"),
            &serde_json::json!({"labels": {"gpu": "yes", "zone": "a"}}),
        ]
    );
}
