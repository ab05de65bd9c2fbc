//! Job behaviour settings: `retries` with backoff, `jitter`, `on_failure`.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use std::time::Duration;

fn started(rec: &serde_json::Value) -> DateTime<Utc> {
    rec["started_at"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_failed_run_is_retried_with_doubling_backoff_until_it_succeeds() {
    let env = Env::new().config(
        "[jobs.flaky]\nschedule = \"@daily\"\nretries = 3\nretry_backoff = \"300ms\"\n\
         shell = 'echo \"$BGSCHED_ATTEMPT $BGSCHED_RUN_ID\" >> {dir}/attempts; [ \"$BGSCHED_ATTEMPT\" -ge 3 ]'\n",
    );
    env.cmd(&["trigger", "flaky"]).run().success();
    let attempts = env.lines("attempts");
    let numbers: Vec<&str> = attempts
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(numbers, ["1", "2", "3"], "{attempts:?}");
    // One run: every attempt sees the same run id.
    let ids: Vec<&str> = attempts
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    let mut recs = env.records("flaky");
    recs.sort_by_key(started);
    let summary: Vec<(String, u64)> = recs
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_string(),
                r["attempt"].as_u64().unwrap_or(1),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("failed".to_string(), 1),
            ("failed".to_string(), 2),
            ("success".to_string(), 3)
        ],
        "{recs:#?}"
    );
    // The final attempt carries the run's own id.
    assert_eq!(recs[2]["run_id"], ids[0]);
    // 300 ms before the first retry, 600 ms before the second.
    let gap = |a: usize, b: usize| (started(&recs[b]) - started(&recs[a])).num_milliseconds();
    assert!(gap(0, 1) >= 300, "first retry after {} ms", gap(0, 1));
    assert!(gap(1, 2) >= 600, "second retry after {} ms", gap(1, 2));
}

#[test]
fn retries_run_out_then_on_failure_reports_the_run() {
    let env = Env::new().config(
        "[jobs.broken]\nschedule = \"@daily\"\nretries = 2\nretry_backoff = \"100ms\"\n\
         shell = 'echo oops >&2; exit 3'\n\
         on_failure = [\"/bin/sh\", \"-c\", 'echo \"$BGSCHED_JOB $BGSCHED_OUTCOME $BGSCHED_EXIT_CODE $BGSCHED_ATTEMPT $BGSCHED_RUN_ID $BGSCHED_OUTPUT_TAIL\" >> {dir}/hook']\n",
    );
    let out = env.cmd(&["trigger", "broken"]).run().code(3);
    let recs = env.records("broken");
    assert_eq!(recs.len(), 3, "{recs:#?}");
    assert!(recs.iter().all(|r| r["outcome"] == "failed"));
    // (The output tail ends with a newline of its own.)
    let hook: Vec<String> = env
        .lines("hook")
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(hook.len(), 1, "the hook runs once, for the run: {hook:?}");
    let fields: Vec<&str> = hook[0].split(' ').collect();
    assert_eq!(&fields[..4], ["broken", "failed", "3", "3"], "{hook:?}");
    assert!(hook[0].contains("oops"), "{hook:?}");
    // The job's one output stream, on trigger's stdout (README "Output").
    assert!(out.stdout.contains("oops"), "{out:?}");
}

#[test]
fn a_run_waiting_to_retry_still_counts_as_running_for_overlap() {
    let env = Env::new().config(
        "[jobs.slow-retry]\nschedule = \"@daily\"\nretries = 1\nretry_backoff = \"1h\"\n\
         shell = 'echo tried >> {dir}/tries; exit 1'\n",
    );
    let out = env
        .cmd(&["trigger", "slow-retry", "--detach"])
        .run()
        .success();
    let run_id = out.stdout.trim().to_string();
    wait_until(PATIENCE, "the first attempt", || {
        !env.lines("tries").is_empty()
    });
    let out = env.cmd(&["trigger", "slow-retry"]).run().code(75);
    assert!(out.stderr.contains("already running"), "{out:?}");
    assert_eq!(env.lines("tries").len(), 1);
    // Stop the waiting supervisor: the failed attempt becomes the result.
    let supervisor = env
        .records("slow-retry")
        .iter()
        .find_map(|r| r["supervisor_pid"].as_i64())
        .or_else(|| {
            std::fs::read_dir("/proc").ok()?.find_map(|e| {
                let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                String::from_utf8_lossy(&environ)
                    .contains(&run_id)
                    .then_some(pid as i64)
            })
        })
        .expect("the supervisor's pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(supervisor as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    wait_until(PATIENCE, "the run's final record", || {
        env.records("slow-retry")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "failed")
    });
}

#[test]
fn jitter_delays_each_scheduled_run_by_the_delay_derived_from_job_and_tick() {
    let toml = format!(
        "[jobs.spread]\nschedule = \"@every 1s\"\njitter = \"600ms\"\nshell = '{}'\n",
        ledger_line("start", "ledger")
    );
    let env = Env::new().config(&toml);
    let config = bgsched::config::load_str(
        &env.path("jobs.toml"),
        toml.replace("{dir}", "/x").as_bytes(),
    )
    .expect("valid config");
    let job = &config.jobs["spread"];
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "six jittered runs", || {
        env.lines("ledger").len() >= 6
    });
    run.signal(rustix::process::Signal::TERM);
    let mut delays = Vec::new();
    for line in env.lines("ledger") {
        let fields: Vec<&str> = line.split(' ').collect();
        let tick: DateTime<Utc> = fields[1].parse().unwrap();
        let at: f64 = fields[2].parse().unwrap();
        let actual = at - tick.timestamp_millis() as f64 / 1000.0;
        let expected = job.jitter_for(tick).as_secs_f64();
        assert!(expected <= 0.6, "delay {expected} beyond the jitter");
        // Never before its own delay; the upper bound only rules out "no
        // delay applied at all" mixed with a loaded machine's slowness.
        assert!(
            actual >= expected,
            "tick {tick}: started {actual:.3}s after the tick, before its delay {expected:.3}s"
        );
        assert!(actual < expected + 5.0, "tick {tick}: {actual:.3}s late");
        delays.push(expected);
    }
    delays.sort_by(f64::total_cmp);
    assert!(
        delays.last().unwrap() - delays.first().unwrap() > 0.01,
        "the delays differ from tick to tick: {delays:?}"
    );
    assert!(run.wait_exit(PATIENCE).is_some());
}

#[test]
fn jitter_is_the_same_for_a_job_and_tick_everywhere_and_spreads_over_the_range() {
    let toml = "[jobs.a]\nschedule = \"@hourly\"\ncommand = [\"true\"]\njitter = \"30s\"\n\
                [jobs.b]\nschedule = \"@hourly\"\ncommand = [\"true\"]\njitter = \"30s\"\n";
    let path = std::path::Path::new("jobs.toml");
    let one = bgsched::config::load_str(path, toml.as_bytes()).unwrap();
    let two = bgsched::config::load_str(path, toml.as_bytes()).unwrap();
    let t0: DateTime<Utc> = "2026-11-24T10:00:00Z".parse().unwrap();
    let mut seen = Vec::new();
    for h in 0..200 {
        let tick = t0 + chrono::Duration::hours(h);
        let d = one.jobs["a"].jitter_for(tick);
        assert_eq!(
            d,
            two.jobs["a"].jitter_for(tick),
            "same job and tick, same delay"
        );
        assert!(d <= Duration::from_secs(30));
        seen.push(d);
    }
    let early = seen
        .iter()
        .filter(|d| **d < Duration::from_secs(15))
        .count();
    assert!(
        (60..=140).contains(&early),
        "{early} of 200 in the first half"
    );
    // Jobs due together do not all start together.
    let differ = (0..50)
        .filter(|h| {
            let tick = t0 + chrono::Duration::hours(*h);
            one.jobs["a"].jitter_for(tick) != one.jobs["b"].jitter_for(tick)
        })
        .count();
    assert!(differ > 40, "{differ}");
}

#[test]
fn a_run_recorded_lost_by_the_scheduler_gets_its_on_failure_hook() {
    let env = Env::new().config(
        "[jobs.doomed]\nschedule = \"@every 1s\"\nshell = 'echo $$ >> {dir}/pids; sleep 600'\n\
         on_failure = [\"/bin/sh\", \"-c\", 'echo \"$BGSCHED_OUTCOME $BGSCHED_RUN_ID\" >> {dir}/hook']\n",
    );
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "a run", || !env.lines("pids").is_empty());
    let job_pid: i32 = env.lines("pids")[0].parse().unwrap();
    let supervisor = parent_of(job_pid).expect("supervisor pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(supervisor).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_until(PATIENCE, "the hook for the lost run", || {
        env.lines("hook").iter().any(|l| l.starts_with("lost "))
    });
    let line = env.lines("hook")[0].clone();
    let run_id = line.split(' ').nth(1).unwrap();
    assert!(env
        .records("doomed")
        .iter()
        .any(|r| r["run_id"] == run_id && r["outcome"] == "lost"));
}
