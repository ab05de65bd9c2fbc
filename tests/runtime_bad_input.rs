//! Jobs that misbehave at run time: a missing binary, binary garbage on
//! stdout, 100 MB of output, closed output pipes, a job that ignores
//! SIGTERM, and a daemon that escapes its process group with `setsid` (killed
//! with its run all the same); plus
//! a reader of `trigger`'s stdout that goes away, Ctrl-C to `trigger`, and a
//! supervisor killed under a running pipeline.
//!
//! Every test checks that the scheduler or `trigger` stays healthy, that the
//! outcome is recorded, and that no process is left behind. To find leftovers
//! every job gets `SCRATCH=<the test's temp dir>` in its environment, which
//! all its descendants inherit (and `bgsched` itself has the directory on its
//! command line): a process whose command line or environment mentions the
//! directory after the test is an orphan.

mod common;

use common::*;
use rustix::process::{Pid, Signal};
use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Bound for the 100 MB runs in a debug build on a loaded machine.
const SLOW: Duration = Duration::from_secs(120);
/// Peak memory a supervisor may use while pumping 100 MB of output.
const MAX_SUPERVISOR_HWM_KIB: u64 = 200 * 1024;
/// `output_tail` keeps 64 KiB; a UTF-8 sequence split by the cut may turn
/// into a few replacement characters.
const MAX_TAIL: usize = 64 * 1024 + 16;

/// A job table with the scratch directory in its environment; `body` holds
/// the rest of its keys.
fn job(name: &str, schedule: &str, body: &str) -> String {
    format!("[jobs.{name}]\nschedule = \"{schedule}\"\nenv = {{ SCRATCH = \"{{dir}}\" }}\n{body}\n")
}

/// Pids (one per line) a job wrote to `file` in the scratch directory.
fn pids(env: &Env, file: &str) -> Vec<i32> {
    env.lines(file)
        .iter()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The first line of a file a job wrote (`None` while it is empty).
fn first_line(env: &Env, file: &str) -> Option<String> {
    env.lines(file).into_iter().next()
}

/// Live processes other than this test whose command line or environment
/// mentions `dir`, with their command lines.
fn processes_mentioning(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = fs::read(entry.path().join("environ")).unwrap_or_default();
        let mentions = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        if mentions(&cmdline) || mentions(&environ) {
            let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, cmd));
        }
    }
    found
}

/// Wait until no process but `except` mentions the scratch directory.
fn assert_no_survivors(env: &Env, except: &[i32]) {
    let start = Instant::now();
    loop {
        let mut left = processes_mentioning(env.dir());
        left.retain(|(pid, _)| !except.contains(pid));
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "processes outlived the test's runs: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak resident set size of a process, in KiB.
fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn kill9(pid: i32) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, Signal::KILL);
    }
}

/// Kills, when the test ends (also on failure), every process still
/// mentioning the scratch directory, so a failing test leaks nothing.
/// Declare it before any `Scheduler`, so it runs after the scheduler's own
/// clean-up.
struct Cleanup<'a>(&'a Env);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for (pid, _) in processes_mentioning(self.0.dir()) {
            kill9(pid);
        }
    }
}

/// The record of one run, if there is one.
fn record(env: &Env, job: &str, run_id: &str) -> Option<Value> {
    env.records(job).into_iter().find(|r| r["run_id"] == run_id)
}

fn is_final(rec: &Value) -> bool {
    rec["outcome"] != "running"
}

/// The end of a text, for failure messages.
fn last_chars(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars[chars.len().saturating_sub(100)..].iter().collect()
}

fn tail_of(rec: &Value) -> &str {
    rec["output_tail"].as_str().unwrap_or("")
}

// 1. A missing binary ----------------------------------------------------

#[test]
fn a_missing_binary_is_recorded_start_failed_every_tick_and_other_jobs_keep_firing() {
    let env = Env::new().config(&format!(
        "{}{}",
        job("missing", "@every 1s", "command = [\"/nonexistent\"]"),
        job(
            "beat",
            "@every 1s",
            &format!("shell = '{}'", ledger_line("beat", "ledger"))
        ),
    ));
    let _cleanup = Cleanup(&env);
    let mut run = env.spawn_run("a");
    let start_failed = |env: &Env| -> Vec<Value> {
        env.records("missing")
            .into_iter()
            .filter(|r| r["outcome"] == "start_failed")
            .collect()
    };
    wait_until(PATIENCE, "3 start_failed records", || {
        start_failed(&env).len() >= 3
    });
    let beats = env.lines("ledger").len();
    wait_until(PATIENCE, "the heartbeat job to keep firing", || {
        env.lines("ledger").len() >= beats + 2
    });
    wait_until(PATIENCE, "start_failed records to keep coming", || {
        start_failed(&env).len() >= 5
    });

    let failed = start_failed(&env);
    let mut ticks: Vec<&str> = failed.iter().map(|r| r["tick"].as_str().unwrap()).collect();
    ticks.dedup();
    assert_eq!(ticks.len(), failed.len(), "one record per tick: {failed:?}");
    for r in &failed {
        assert_eq!(r["trigger"], "schedule", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .unwrap_or("")
                .contains("command not found: /nonexistent"),
            "{r}"
        );
    }
    assert!(
        env.records("missing")
            .iter()
            .all(|r| r["outcome"] == "start_failed"),
        "{:?}",
        env.records("missing")
    );
    let view = env.job_view("missing");
    assert_eq!(view["last_run"]["outcome"], "start_failed", "{view}");
    assert_eq!(view["state"], "idle", "{view}");
    assert_eq!(env.job_view("beat")["last_run"]["outcome"], "success");

    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "log:\n{}", run.log_text());
    assert_no_survivors(&env, &[]);
}

// 2. Binary garbage ------------------------------------------------------

/// Random bytes, plus terminal escape sequences that must not reach the log
/// raw; the first run leaves its run id in `first`.
const GARBAGE: &str = r#"shell = '''[ -e {dir}/first ] || echo $BGSCHED_RUN_ID > {dir}/first; printf "osc\033]0;pwned\007 sgr\033[31mred\n"; head -c 200000 /dev/urandom; echo; echo garbage-end'''"#;

fn check_garbage_record(rec: &Value) {
    assert_eq!(rec["outcome"], "success", "{rec}");
    let tail = tail_of(rec);
    assert!(tail.len() <= MAX_TAIL, "tail of {} bytes", tail.len());
    assert!(tail.ends_with("garbage-end\n"), "{:?}", last_chars(tail));
    assert!(tail.contains('\u{fffd}'), "invalid UTF-8 is replaced");
}

fn garbage_and_heartbeat_config() -> String {
    format!(
        "{}{}",
        job("garbage", "@every 1s", GARBAGE),
        job(
            "beat",
            "@every 1s",
            "shell = 'echo heartbeat-$BGSCHED_RUN_ID'"
        ),
    )
}

/// Wait for the first garbage run's record, then for a heartbeat run that
/// started after it ended to show up in the scheduler's log; then stop the
/// scheduler and return its log.
fn garbage_then_heartbeat(env: &Env, mut run: Scheduler) -> Vec<u8> {
    let mut garbage = None;
    wait_until(PATIENCE, "the garbage run's final record", || {
        garbage = first_line(env, "first")
            .and_then(|id| record(env, "garbage", &id))
            .filter(is_final);
        garbage.is_some()
    });
    let garbage = garbage.unwrap();
    check_garbage_record(&garbage);
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let ended = time(&garbage["ended_at"]);
    let mut later_beat = None;
    wait_until(PATIENCE, "a heartbeat after the garbage run", || {
        later_beat = env
            .records("beat")
            .into_iter()
            .filter(|r| r["outcome"] == "success")
            .find(|r| time(&r["started_at"]) > ended);
        later_beat.is_some()
    });
    let beat_id = later_beat.unwrap()["run_id"].as_str().unwrap().to_string();
    wait_until(PATIENCE, "the heartbeat's output line in the log", || {
        run.log_text().contains(&format!("heartbeat-{beat_id}"))
    });
    // Every history entry still parses (records() panics on a torn one) and
    // `list --json` copes with the garbage.
    assert_eq!(env.job_view("garbage")["last_run"]["outcome"], "success");
    assert!(!env.records("beat").is_empty());

    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "log:\n{}", run.log_text());
    assert_no_survivors(env, &[]);
    let log = fs::read(&run.log).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("garbage-end"),
        "the garbage job's last line is logged"
    );
    assert!(text.contains("run finished"));
    log
}

#[test]
fn binary_garbage_output_is_recorded_and_does_not_break_the_text_log() {
    let env = Env::new().config(&garbage_and_heartbeat_config());
    let _cleanup = Cleanup(&env);
    let run = env.spawn_run("a");
    let log = garbage_then_heartbeat(&env, run);
    // Every line is a log event of its own: no job output split or forged one.
    for line in String::from_utf8_lossy(&log).lines() {
        let plain = strip_sgr(line).as_bytes();
        assert!(
            plain.len() > 5 && plain[..4].iter().all(u8::is_ascii_digit) && plain[4] == b'-',
            "a log line does not start with a timestamp: {:?}",
            line.chars().take(200).collect::<String>()
        );
    }
    // The job's escape sequences were escaped, not passed to whoever reads the log.
    let raw = |s: &str| log.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(
        !raw("\x1b]0;pwned"),
        "raw OSC sequence from the job in the log"
    );
    assert!(
        !raw("\x1b[31mred"),
        "raw SGR sequence from the job in the log"
    );
}

#[test]
fn binary_garbage_output_keeps_every_json_log_line_valid() {
    let env = Env::new().config(&garbage_and_heartbeat_config());
    let _cleanup = Cleanup(&env);
    let log = env.path("json.log");
    let mut cmd = env
        .cmd(&["--log-format", "json", "run", "--instance-id", "j"])
        .0;
    cmd.stdout(fs::File::create(&log).unwrap())
        .stderr(fs::OpenOptions::new().append(true).open(&log).unwrap());
    let run = Scheduler {
        child: cmd.spawn().unwrap(),
        log,
        instance: "j".to_string(),
    };
    let log = garbage_then_heartbeat(&env, run);
    let text = String::from_utf8(log).expect("the JSON log is UTF-8");
    let mut job_lines = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?}",
                line.chars().take(200).collect::<String>()
            )
        });
        if v["job"] == "garbage" && v["stream"] == "output" {
            job_lines += 1;
        }
    }
    assert!(job_lines > 100, "only {job_lines} garbage lines logged");
}

/// The line without the formatter's leading colour codes (`ESC[...m`).
fn strip_sgr(mut line: &str) -> &str {
    while let Some(rest) = line.strip_prefix("\x1b[") {
        match rest.find('m') {
            Some(end) if rest[..end].bytes().all(|b| b.is_ascii_digit() || b == b';') => {
                line = &rest[end + 1..];
            }
            _ => break,
        }
    }
    line
}

#[test]
fn binary_garbage_through_trigger_succeeds_with_a_parsable_record() {
    let env = Env::new().config(&job("garbage", "@daily", GARBAGE));
    let _cleanup = Cleanup(&env);
    let out = env.cmd(&["trigger", "garbage"]).run().success();
    assert!(out.stdout.contains("garbage-end"), "{}", out.stderr);
    let recs = env.records("garbage");
    assert_eq!(recs.len(), 1);
    check_garbage_record(&recs[0]);
    assert_eq!(env.job_view("garbage")["last_run"]["outcome"], "success");
    assert_no_survivors(&env, &[]);
}

// 3. 100 MB of output -----------------------------------------------------

/// After the output, the job says so and waits for the test, so the test can
/// read the supervisor's peak memory while it is certainly still there.
fn big_output_job(producer: &str) -> String {
    job(
        "big",
        "@every 1s",
        &format!(
            "shell = '''[ -e {{dir}}/first ] && exit 0; echo $PPID > {{dir}}/supervisor.tmp; mv {{dir}}/supervisor.tmp {{dir}}/supervisor; echo $BGSCHED_RUN_ID > {{dir}}/first; {producer}; : > {{dir}}/output-done; while [ ! -e {{dir}}/go ]; do sleep 0.05; done'''"
        ),
    )
}

#[test]
fn trigger_of_a_job_printing_100_mb_keeps_memory_and_the_tail_bounded() {
    let env = Env::new().config(&big_output_job(
        "yes 0123456789abcdef0123456789abcdef0123456789abcdef | head -c 100000000",
    ));
    let _cleanup = Cleanup(&env);
    let started = Instant::now();
    // stdout gets the 100 MB: straight to /dev/null.
    let mut trigger = env.cmd(&["trigger", "big"]).0;
    trigger
        .stdout(Stdio::null())
        .stderr(fs::File::create(env.path("trigger.err")).unwrap());
    let mut child = trigger.spawn().unwrap();
    wait_until(SLOW, "the 100 MB to be written", || {
        env.path("output-done").exists()
    });
    // In the foreground the trigger process is the job's supervisor.
    let supervisor = first_line(&env, "supervisor")
        .unwrap()
        .parse::<i32>()
        .unwrap();
    assert_eq!(supervisor, child.id() as i32);
    let hwm = vm_hwm_kib(supervisor).expect("the supervisor's VmHWM");
    fs::write(env.path("go"), "").unwrap();
    let mut status = None;
    wait_until(SLOW, "trigger to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let elapsed = started.elapsed();
    let err = fs::read_to_string(env.path("trigger.err")).unwrap();
    assert_eq!(status.unwrap().code(), Some(0), "stderr:\n{err}");
    assert!(elapsed < SLOW, "took {elapsed:?}");
    assert!(
        hwm < MAX_SUPERVISOR_HWM_KIB,
        "the supervisor peaked at {hwm} KiB"
    );
    let run_id = first_line(&env, "first").unwrap();
    let rec = record(&env, "big", &run_id).expect("the run's record");
    assert_eq!(rec["outcome"], "success", "{rec}");
    let tail = tail_of(&rec);
    assert!(tail.len() <= MAX_TAIL, "tail of {} bytes", tail.len());
    assert!(tail.len() >= 60 * 1024, "tail of {} bytes", tail.len());
    assert!(
        // `head -c` cut the last line; the tail ends exactly there.
        tail.ends_with("\n0123456789abcdef"),
        "{:?}",
        last_chars(tail)
    );
    eprintln!("100 MB through trigger: {elapsed:?}, supervisor VmHWM {hwm} KiB");
    assert_no_survivors(&env, &[]);
}

#[test]
fn run_of_a_job_printing_100_mb_in_1_mb_lines_keeps_memory_tail_and_log_bounded() {
    // Short lines under `run` would log 2 million events (about 1 GB of log
    // text); 1 MB lines exercise the line cut instead.
    let env = Env::new().config(&big_output_job(
        r#"head -c 100000000 /dev/zero | tr "\0" x | fold -w 1000000"#,
    ));
    let _cleanup = Cleanup(&env);
    let started = Instant::now();
    let mut run = env.spawn_run("a");
    wait_until(SLOW, "the 100 MB to be written", || {
        env.path("output-done").exists()
    });
    let supervisor = first_line(&env, "supervisor")
        .unwrap()
        .parse::<i32>()
        .unwrap();
    assert_ne!(supervisor, run.pid(), "a supervisor process runs the job");
    let hwm = vm_hwm_kib(supervisor).expect("the supervisor's VmHWM");
    fs::write(env.path("go"), "").unwrap();
    let run_id = first_line(&env, "first").unwrap();
    let mut rec = None;
    wait_until(SLOW, "the run's final record", || {
        rec = record(&env, "big", &run_id).filter(is_final);
        rec.is_some()
    });
    let elapsed = started.elapsed();
    let rec = rec.unwrap();
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert!(
        hwm < MAX_SUPERVISOR_HWM_KIB,
        "the supervisor peaked at {hwm} KiB"
    );
    let tail = tail_of(&rec);
    assert!(tail.len() <= MAX_TAIL, "tail of {} bytes", tail.len());
    // The log cuts the lines; the record keeps the last bytes as printed.
    // (`fold` ends the last line without a newline.)
    assert!(tail == "x".repeat(64 * 1024), "{:?}", last_chars(tail));
    // 100 lines, each cut at 16 KiB: a couple of MB of log, not 100.
    wait_until(PATIENCE, "the run to be logged finished", || {
        run.log_text().contains("run finished")
    });
    let log_len = fs::metadata(&run.log).unwrap().len();
    assert!(log_len < 10_000_000, "the log grew to {log_len} bytes");
    run.signal(Signal::TERM);
    assert_eq!(
        run.wait_exit(PATIENCE),
        Some(0),
        "log tail:\n{}",
        last_chars(&run.log_text())
    );
    assert!(elapsed < SLOW, "took {elapsed:?}");
    eprintln!("100 MB through run: {elapsed:?}, supervisor VmHWM {hwm} KiB, log {log_len} bytes");
    assert_no_survivors(&env, &[]);
}

/// `bgsched trigger chatty | head -n 1`: the reader of trigger's stdout goes
/// away while the job still prints. Returns trigger's exit status and stderr.
fn trigger_into_a_closed_pipe(env: &Env) -> (Option<i32>, String) {
    use std::io::BufRead;
    let mut trigger = env.cmd(&["trigger", "chatty"]).0;
    trigger
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(fs::File::create(env.path("trigger.err")).unwrap());
    let mut child = trigger.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "chatty-line\n");
    drop(out);
    let mut status = None;
    wait_until(PATIENCE, "trigger to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let err = fs::read_to_string(env.path("trigger.err")).unwrap();
    (status.unwrap().code(), err)
}

const CHATTY: &str = "shell = 'yes chatty-line | head -c 100000000'";

#[test]
fn trigger_whose_stdout_reader_goes_away_neither_hangs_nor_loses_the_record() {
    let env = Env::new().config(&job("chatty", "@daily", CHATTY));
    let _cleanup = Cleanup(&env);
    let (code, err) = trigger_into_a_closed_pipe(&env);
    assert!(code.is_some(), "trigger died of a signal; stderr:\n{err}");
    let recs = env.records("chatty");
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert!(is_final(&recs[0]), "{}", recs[0]);
    assert_no_survivors(&env, &[]);
}

#[test]
fn trigger_whose_stdout_reader_goes_away_does_not_panic() {
    let env = Env::new().config(&job("chatty", "@daily", CHATTY));
    let _cleanup = Cleanup(&env);
    let (_, err) = trigger_into_a_closed_pipe(&env);
    assert!(!err.contains("panicked"), "stderr:\n{err}");
}

// 4. Closed stdout and stderr ---------------------------------------------

/// Closes its output, then waits for the test's go before it ends.
const CLOSES_OUTPUT: &str = "shell = '''echo before-close; echo $BGSCHED_RUN_ID > {dir}/closed.tmp; exec >&- 2>&-; mv {dir}/closed.tmp {dir}/closed; while [ ! -e {dir}/go ]; do sleep 0.05; done; echo $BGSCHED_RUN_ID >> {dir}/marker'''";

/// For a while after the job closed its output, its run must stay open.
fn observe_still_running(env: &Env, run_id: &str, also: &mut dyn FnMut()) {
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Some(rec) = record(env, "closer", run_id) {
            assert!(
                !is_final(&rec),
                "the run was finished while its process still runs: {rec}"
            );
        }
        also();
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_job_that_closes_its_output_is_not_finished_before_it_exits_under_run() {
    let env = Env::new().config(&job("closer", "@every 1s", CLOSES_OUTPUT));
    let _cleanup = Cleanup(&env);
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the job to close its output", || {
        env.path("closed").exists()
    });
    let run_id = first_line(&env, "closed").unwrap();
    observe_still_running(&env, &run_id, &mut || {});
    assert_eq!(env.job_view("closer")["state"], "running");
    assert!(!env.path("marker").exists());
    fs::write(env.path("go"), "").unwrap();
    let mut rec = None;
    wait_until(PATIENCE, "the run's final record", || {
        rec = record(&env, "closer", &run_id).filter(is_final);
        if rec.is_some() {
            // Read after the record: the job wrote the marker before exiting.
            assert!(
                env.lines("marker").contains(&run_id),
                "the run was recorded finished before the job wrote its marker"
            );
        }
        rec.is_some()
    });
    let rec = rec.unwrap();
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_eq!(rec["exit_code"], 0, "{rec}");
    assert!(tail_of(&rec).contains("before-close"), "{rec}");
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "log:\n{}", run.log_text());
    assert_no_survivors(&env, &[]);
}

#[test]
fn a_job_that_closes_its_output_keeps_trigger_waiting_until_it_exits() {
    let env = Env::new().config(&job("closer", "@daily", CLOSES_OUTPUT));
    let _cleanup = Cleanup(&env);
    let mut trigger = env.cmd(&["trigger", "closer"]).0;
    trigger
        .stdout(fs::File::create(env.path("trigger.out")).unwrap())
        .stderr(fs::File::create(env.path("trigger.err")).unwrap());
    let mut child = trigger.spawn().unwrap();
    wait_until(PATIENCE, "the job to close its output", || {
        env.path("closed").exists()
    });
    let run_id = first_line(&env, "closed").unwrap();
    observe_still_running(&env, &run_id, &mut || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "trigger returned while the job still runs"
        );
    });
    fs::write(env.path("go"), "").unwrap();
    let mut status = None;
    wait_until(PATIENCE, "trigger to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(0));
    assert!(env.lines("marker").contains(&run_id));
    assert!(fs::read_to_string(env.path("trigger.out"))
        .unwrap()
        .contains("before-close"));
    let rec = record(&env, "closer", &run_id).unwrap();
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert_no_survivors(&env, &[]);
}

// 5. A job that ignores SIGTERM -------------------------------------------

/// Ignores SIGTERM, as does its background child; both pids go to `pids`.
const IGNORES_TERM: &str = "shell = '''trap \"\" TERM; echo $$ >> {dir}/pids; sleep 600 & echo $! >> {dir}/pids; echo $BGSCHED_RUN_ID >> {dir}/runs; wait'''";

#[test]
fn a_job_ignoring_sigterm_times_out_is_killed_after_kill_grace_and_leaves_nothing() {
    let env = Env::new().config(&job(
        "stubborn",
        "@every 1s",
        &format!("timeout = \"1s\"\nkill_grace = \"1s\"\n{IGNORES_TERM}"),
    ));
    let _cleanup = Cleanup(&env);
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the job to start", || {
        !env.lines("runs").is_empty()
    });
    let run_id = env.lines("runs")[0].clone();
    let mut rec = None;
    wait_until(PATIENCE, "the timed-out record", || {
        rec = record(&env, "stubborn", &run_id).filter(is_final);
        rec.is_some()
    });
    let rec = rec.unwrap();
    assert_eq!(rec["outcome"], "timed_out", "{rec}");
    assert!(
        rec["reason"].as_str().unwrap_or("").contains("timed out"),
        "{rec}"
    );
    let ms = rec["duration_ms"].as_u64().unwrap();
    // SIGTERM was ignored, so only SIGKILL after kill_grace ended it.
    assert!(
        (1900..20_000).contains(&ms),
        "timeout 1s + kill_grace 1s took {ms} ms"
    );
    assert_eq!(rec["signal"], 9, "{rec}");
    // The scheduler is not stuck: it runs the job again afterwards.
    wait_until(PATIENCE, "another run", || env.lines("runs").len() >= 2);
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "log:\n{}", run.log_text());
    let stopped = pids(&env, "pids");
    wait_until(PATIENCE, "every pid of the stopped runs to be gone", || {
        stopped.iter().all(|p| !alive(*p))
    });
    assert_no_survivors(&env, &[]);
}

#[test]
fn sigterm_to_run_kills_a_job_ignoring_sigterm_after_the_graces_and_exits_0() {
    let env = Env::new().config(&format!(
        "[scheduler]\nshutdown_grace = \"1s\"\n{}",
        job(
            "stubborn",
            "@every 1s",
            &format!("kill_grace = \"1s\"\n{IGNORES_TERM}")
        )
    ));
    let _cleanup = Cleanup(&env);
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the job to start", || {
        !env.lines("runs").is_empty()
    });
    let run_id = env.lines("runs")[0].clone();
    let started = Instant::now();
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "log:\n{}", run.log_text());
    let took = started.elapsed();
    // The scheduler waits for its supervisors, which record before exiting.
    let rec = record(&env, "stubborn", &run_id).expect("the run's record");
    assert_eq!(rec["outcome"], "killed", "{rec}");
    assert_eq!(rec["signal"], 9, "{rec}");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap_or("")
            .contains("supervisor terminated"),
        "{rec}"
    );
    assert!(took < PATIENCE, "shutdown took {took:?}");
    assert_eq!(env.lines("runs").len(), 1, "a run started during shutdown");
    let stopped = pids(&env, "pids");
    assert_eq!(stopped.len(), 2, "the shell and its child");
    wait_until(PATIENCE, "both pids of the stopped run to be gone", || {
        stopped.iter().all(|p| !alive(*p))
    });
    assert_no_survivors(&env, &[]);
}

/// `bgsched trigger stubborn` in the foreground, interrupted (as by Ctrl-C)
/// once its job runs. Returns trigger's exit code and the run's record.
fn interrupt_trigger_of_a_job_ignoring_sigterm(env: &Env) -> (Option<i32>, Value) {
    let mut trigger = env.cmd(&["trigger", "stubborn"]).0;
    trigger
        .stdout(fs::File::create(env.path("trigger.out")).unwrap())
        .stderr(fs::File::create(env.path("trigger.err")).unwrap());
    let mut child = trigger.spawn().unwrap();
    // Both pids are written: the job runs, so trigger handles SIGINT itself.
    wait_until(PATIENCE, "the job to start", || {
        pids(env, "pids").len() >= 2
    });
    let run_id = env.lines("runs")[0].clone();
    rustix::process::kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::INT).unwrap();
    let mut status = None;
    wait_until(PATIENCE, "trigger to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let stopped = pids(env, "pids");
    wait_until(PATIENCE, "both pids of the run to be gone", || {
        stopped.iter().all(|p| !alive(*p))
    });
    assert_no_survivors(env, &[]);
    let rec = record(env, "stubborn", &run_id).expect("the run's record");
    (status.unwrap().code(), rec)
}

fn stubborn_manual_job() -> String {
    job(
        "stubborn",
        "@daily",
        &format!("kill_grace = \"1s\"\n{IGNORES_TERM}"),
    )
}

#[test]
fn ctrl_c_to_trigger_kills_a_job_ignoring_sigterm_after_kill_grace() {
    let env = Env::new().config(&stubborn_manual_job());
    let _cleanup = Cleanup(&env);
    let (code, rec) = interrupt_trigger_of_a_job_ignoring_sigterm(&env);
    assert!(code.is_some(), "trigger died of the signal itself");
    assert_eq!(rec["outcome"], "killed", "{rec}");
    assert_eq!(rec["signal"], 9, "{rec}");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap_or("")
            .contains("supervisor interrupted"),
        "{rec}"
    );
}

#[test]
fn ctrl_c_to_trigger_exits_130_as_documented() {
    let env = Env::new().config(&stubborn_manual_job());
    let _cleanup = Cleanup(&env);
    let (code, _) = interrupt_trigger_of_a_job_ignoring_sigterm(&env);
    assert_eq!(code, Some(130));
}

// 6. A daemon that escapes with setsid ------------------------------------

/// The first run starts a daemon in a session of its own and waits until it
/// is there (so the group kill cannot catch it before `setsid`); the daemon
/// keeps the job's stdout and stderr open. Later runs only say hello.
const ESCAPES: &str = "shell = '''if [ ! -e {dir}/escaped ]; then setsid sh -c 'echo $$ > {dir}/escaped.tmp; mv {dir}/escaped.tmp {dir}/escaped; exec sleep 600' & while [ ! -e {dir}/escaped ]; do sleep 0.05; done; echo $BGSCHED_RUN_ID > {dir}/first; fi; echo hello-$BGSCHED_RUN_ID'''";

/// Kills the escaped daemon when the test ends, however it ends.
struct Escaped(i32);

impl Drop for Escaped {
    fn drop(&mut self) {
        kill9(self.0);
    }
}

fn escaped_pid(env: &Env) -> Escaped {
    let pid = first_line(env, "escaped").unwrap().parse().unwrap();
    Escaped(pid)
}

fn assert_run_lock_free(env: &Env, job: &str) {
    let lock =
        fs::File::open(env.state_dir().join("jobs").join(job).join("run.lock")).expect("run.lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("the run lock is free once the run is recorded");
}

// The daemon called setsid, so it is in neither the job's process group nor
// its session; the supervisor, a child subreaper, still has it below itself
// and kills it with the run. So it neither survives nor, holding the job's
// output pipe, keeps the run from ending.

#[test]
fn a_setsid_daemon_is_killed_with_its_run_under_trigger() {
    let env = Env::new().config(&job("escaper", "@daily", ESCAPES));
    let _cleanup = Cleanup(&env);
    let started = Instant::now();
    let out = env.cmd(&["trigger", "escaper"]).run().success();
    let took = started.elapsed();
    let daemon = escaped_pid(&env);
    assert!(out.stdout.contains("hello-"), "{out:?}");
    assert!(took < Duration::from_secs(20), "trigger took {took:?}");
    let run_id = first_line(&env, "first").unwrap();
    let rec = record(&env, "escaper", &run_id).expect("the run's record");
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert!(tail_of(&rec).contains("hello-"), "{rec}");
    assert_eq!(env.job_view("escaper")["state"], "idle");
    assert_run_lock_free(&env, "escaper");
    assert!(!alive(daemon.0), "the escaped daemon outlived its run");
    assert_no_survivors(&env, &[]);
    eprintln!(
        "trigger with an escaped daemon: {took:?}, duration_ms {}",
        rec["duration_ms"]
    );
}

#[test]
fn a_setsid_daemon_is_killed_with_its_run_under_the_scheduler() {
    let env = Env::new().config(&job("escaper", "@every 1s", ESCAPES));
    let _cleanup = Cleanup(&env);
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the daemon to escape", || {
        env.path("first").exists()
    });
    let daemon = escaped_pid(&env);
    let run_id = first_line(&env, "first").unwrap();
    let mut rec = None;
    wait_until(PATIENCE, "the run's final record", || {
        rec = record(&env, "escaper", &run_id).filter(is_final);
        rec.is_some()
    });
    let rec = rec.unwrap();
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert!(!alive(daemon.0), "the escaped daemon outlived its run");
    let ms = rec["duration_ms"].as_u64().unwrap();
    assert!(ms < 20_000, "the run took {ms} ms");
    // The schedule goes on: later runs start and finish.
    wait_until(PATIENCE, "two later runs", || {
        env.records("escaper")
            .iter()
            .filter(|r| r["run_id"] != run_id.as_str() && r["outcome"] == "success")
            .count()
            >= 2
    });
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "log:\n{}", run.log_text());
    assert_no_survivors(&env, &[]);
}

#[test]
fn an_escaped_daemon_does_not_delay_the_record() {
    let env = Env::new().config(&job("escaper", "@daily", ESCAPES));
    let _cleanup = Cleanup(&env);
    env.cmd(&["trigger", "escaper"]).run().success();
    let _daemon = escaped_pid(&env);
    let run_id = first_line(&env, "first").unwrap();
    let rec = record(&env, "escaper", &run_id).expect("the run's record");
    let ms = rec["duration_ms"].as_u64().unwrap();
    // The job itself takes a few tens of ms; nothing waits for the daemon's
    // pipe to close on its own.
    assert!(ms < 1500, "the run took {ms} ms");
}

// 7. The supervisor itself is killed --------------------------------------

/// A pipeline, as in `shell = "pg_dump shop | gzip > ..."`: its parts are
/// children of the job's shell, in the job's process group.
const PIPELINE: &str = "shell = '''echo $$ >> {dir}/pids; sh -c 'echo $$ >> {dir}/pids; exec sleep 600' | cat; echo $BGSCHED_RUN_ID >> {dir}/runs'''";

#[test]
fn killing_the_supervisor_leaves_no_part_of_the_job_running() {
    // Under `bgsched run`: the scheduler notices its supervisor died and
    // kills what is left of the job's group. (A `trigger --detach`ed run has
    // no scheduler watching it; there only the direct child goes, see README.)
    let env = Env::new().config(&job("pipeline", "@every 1s", PIPELINE));
    let _cleanup = Cleanup(&env);
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "the pipeline to run", || {
        pids(&env, "pids").len() >= 2
    });
    let job_pids = pids(&env, "pids");
    let supervisor = parent_of(job_pids[0]).expect("the supervisor");
    kill9(supervisor);
    wait_until(
        PATIENCE,
        "the job's shell to die with its supervisor",
        || !alive(job_pids[0]),
    );
    wait_until(
        Duration::from_secs(10),
        "the pipeline's sleep to be gone too",
        || !alive(job_pids[1]),
    );
}
