//! `bgsched run` end to end: timing, overlap, takeover, crash safety, catch-up.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use rustix::process::Signal;
use std::collections::HashSet;

/// Parsed ledger line written by [`ledger_line`].
struct Entry {
    event: String,
    tick: DateTime<Utc>,
    at: f64,
    run_id: String,
    trigger: String,
    instance: String,
}

fn ledger(env: &Env, file: &str) -> Vec<Entry> {
    env.lines(file)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 6, "malformed ledger line {l:?}");
            Entry {
                event: f[0].to_string(),
                tick: DateTime::parse_from_rfc3339(f[1])
                    .expect("tick")
                    .with_timezone(&Utc),
                at: f[2].parse().expect("time"),
                run_id: f[3].to_string(),
                trigger: f[4].to_string(),
                instance: f[5].to_string(),
            }
        })
        .collect()
}

fn tick_secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

#[test]
fn every_second_job_fires_once_per_second_on_time() {
    let env = Env::new().config(&format!(
        "[jobs.beat]\nschedule = \"@every 1s\"\nshell = '{}'\n",
        ledger_line("start", "ledger")
    ));
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "6 fires", || env.lines("ledger").len() >= 6);
    let entries = ledger(&env, "ledger");
    let ticks: Vec<i64> = entries.iter().map(|e| e.tick.timestamp_millis()).collect();
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "ticks not one second apart: {ticks:?}"
        );
    }
    for e in &entries {
        assert_eq!(
            e.tick.timestamp_subsec_millis(),
            0,
            "tick not on a whole second"
        );
        assert_eq!(e.trigger, "schedule");
        assert_eq!(e.instance, "a");
        let late = e.at - tick_secs(e.tick);
        // Generous: the point is "started at its tick, not a poll interval later".
        assert!(
            (0.0..0.9).contains(&late),
            "started {late:.3}s after its tick"
        );
    }
    let ids: HashSet<&str> = entries.iter().map(|e| e.run_id.as_str()).collect();
    assert_eq!(ids.len(), entries.len(), "run ids are not unique");
}

#[test]
fn a_job_longer_than_its_interval_never_overlaps_and_skips_are_recorded() {
    let env = Env::new().config(&format!(
        "[jobs.slow]\nschedule = \"@every 1s\"\nshell = '{}; sleep 3; {}'\n",
        ledger_line("start", "ledger"),
        ledger_line("end", "ledger")
    ));
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "three finished runs", || {
        env.lines("ledger")
            .iter()
            .filter(|l| l.starts_with("end"))
            .count()
            >= 3
    });
    let entries = ledger(&env, "ledger");
    let mut active: Option<&str> = None;
    for e in &entries {
        match e.event.as_str() {
            "start" => {
                assert!(
                    active.is_none(),
                    "run {} started while {active:?} was active",
                    e.run_id
                );
                active = Some(&e.run_id);
            }
            _ => {
                assert_eq!(
                    active,
                    Some(e.run_id.as_str()),
                    "end without matching start"
                );
                active = None;
            }
        }
    }
    wait_until(PATIENCE, "skips in the history", || {
        env.records("slow")
            .iter()
            .filter(|r| r["outcome"] == "skipped")
            .count()
            >= 2
    });
    let skip = env
        .records("slow")
        .into_iter()
        .find(|r| r["outcome"] == "skipped")
        .unwrap();
    assert!(
        skip["reason"].as_str().unwrap().contains("already running"),
        "{skip}"
    );
    assert!(env.job_view("slow")["recent_skips"].as_u64().unwrap() >= 2);
}

#[test]
fn a_standby_takes_over_within_a_second_of_kill_9() {
    let env = Env::new().config(&format!(
        "[jobs.beat]\nschedule = \"@every 1s\"\nshell = '{}'\n",
        ledger_line("start", "ledger")
    ));
    let mut a = env.spawn_run("a");
    wait_until(PATIENCE, "a fire by a", || {
        ledger(&env, "ledger").iter().any(|e| e.instance == "a")
    });
    let _b = env.spawn_run("b");
    wait_until(PATIENCE, "b waiting as a standby", || b_waits(&env));
    assert_eq!(env.list_json()["leader"]["instance"], "a");
    a.kill9();
    let killed_at = now_secs();
    wait_until(PATIENCE, "a fire by b", || {
        ledger(&env, "ledger").iter().any(|e| e.instance == "b")
    });
    assert_eq!(env.list_json()["leader"]["instance"], "b");
    let first_b = ledger(&env, "ledger")
        .into_iter()
        .find(|e| e.instance == "b")
        .unwrap();
    // b fires the first tick after the takeover (or catches up the one in between).
    assert!(
        first_b.at - killed_at < 5.0,
        "b took {:.2}s to fire",
        first_b.at - killed_at
    );
    let ticks: Vec<i64> = ledger(&env, "ledger")
        .iter()
        .map(|e| e.tick.timestamp())
        .collect();
    let unique: HashSet<&i64> = ticks.iter().collect();
    assert_eq!(unique.len(), ticks.len(), "a tick fired twice: {ticks:?}");
}

fn b_waits(env: &Env) -> bool {
    std::fs::read_to_string(env.path("b.log"))
        .unwrap_or_default()
        .contains("waiting for leadership")
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_run_survives_kill_9_of_the_scheduler_and_is_recorded() {
    let env = Env::new().config(&format!(
        "[jobs.work]\nschedule = \"@every 1s\"\nshell = '{}; sleep 2; echo finished-output; {}'\n",
        ledger_line("start", "ledger"),
        ledger_line("end", "ledger")
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "a run to start", || {
        !env.lines("ledger").is_empty()
    });
    run.kill9();
    let run_id = ledger(&env, "ledger")[0].run_id.clone();
    // While the scheduler is dead the run still counts as running.
    assert_eq!(env.job_view("work")["state"], "running");
    env.cmd(&["trigger", "work"])
        .run()
        .code(75)
        .stderr_has("already running since");
    wait_until(PATIENCE, "the orphaned run to finish", || {
        env.lines("ledger").len() >= 2
    });
    wait_until(PATIENCE, "its record to be final", || {
        env.records("work")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "success")
    });
    let rec = env
        .records("work")
        .into_iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap();
    assert!(
        rec["output_tail"]
            .as_str()
            .unwrap()
            .contains("finished-output"),
        "{rec}"
    );
    assert_eq!(rec["trigger"], "schedule");
    assert_eq!(rec["instance"], "a");
}

#[test]
fn a_stopped_scheduler_does_not_stop_the_run_or_break_skip() {
    let env = Env::new().config(&format!(
        "[jobs.work]\nschedule = \"@every 1s\"\nshell = '{}; sleep 2; {}'\n",
        ledger_line("start", "ledger"),
        ledger_line("end", "ledger")
    ));
    let run = env.spawn_run("a");
    wait_until(PATIENCE, "a run to start", || {
        !env.lines("ledger").is_empty()
    });
    run.signal(Signal::STOP);
    env.cmd(&["trigger", "work"]).run().code(75);
    wait_until(
        PATIENCE,
        "the run to finish while the scheduler is stopped",
        || env.lines("ledger").len() >= 2,
    );
    let run_id = ledger(&env, "ledger")[0].run_id.clone();
    wait_until(PATIENCE, "its record", || {
        env.records("work")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "success")
    });
    run.signal(Signal::CONT);
}

#[test]
fn sigterm_lets_the_running_job_finish_then_exits_0() {
    let env = Env::new().config(&format!(
        "[scheduler]\nshutdown_grace = \"20s\"\n[jobs.work]\nschedule = \"@every 1s\"\nshell = '{}; sleep 1; {}'\n",
        ledger_line("start", "ledger"),
        ledger_line("end", "ledger")
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "a run to start", || {
        !env.lines("ledger").is_empty()
    });
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "log:\n{}", run.log_text());
    let entries = ledger(&env, "ledger");
    assert_eq!(
        entries.last().unwrap().event,
        "end",
        "the run was cut short"
    );
    let starts = entries.iter().filter(|e| e.event == "start").count();
    let ends = entries.iter().filter(|e| e.event == "end").count();
    assert_eq!(starts, ends, "a run did not finish before exit");
}

#[test]
fn shutdown_grace_over_terminates_the_job_group_and_records_it() {
    let env = Env::new().config(&format!(
        "[scheduler]\nshutdown_grace = \"1s\"\n[defaults]\nkill_grace = \"1s\"\n[jobs.work]\nschedule = \"@every 1s\"\nshell = '{}; sleep 600'\n",
        ledger_line("start", "ledger"),
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "a run to start", || {
        !env.lines("ledger").is_empty()
    });
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "log:\n{}", run.log_text());
    let run_id = ledger(&env, "ledger")[0].run_id.clone();
    wait_until(PATIENCE, "the terminated run's record", || {
        env.records("work")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "killed")
    });
}

#[test]
fn missed_ticks_within_catchup_fire_once_late_and_older_ones_are_recorded_missed() {
    let env = Env::new().config(&format!(
        "[jobs.beat]\nschedule = \"@every 2s\"\ncatchup = \"1m\"\nshell = '{}'\n",
        ledger_line("start", "ledger")
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "a first fire", || !env.lines("ledger").is_empty());
    run.kill9();
    let last = ledger(&env, "ledger").last().unwrap().tick;
    // Let at least two ticks pass with no scheduler.
    wait_until(PATIENCE, "two ticks to pass", || {
        Utc::now() > last + chrono::Duration::milliseconds(5500)
    });
    let _run = env.spawn_run("b");
    wait_until(PATIENCE, "a catch-up fire", || {
        ledger(&env, "ledger")
            .iter()
            .any(|e| e.trigger == "catchup")
    });
    let entries = ledger(&env, "ledger");
    let catchups: Vec<&Entry> = entries.iter().filter(|e| e.trigger == "catchup").collect();
    assert_eq!(catchups.len(), 1, "missed ticks must coalesce into one run");
    assert!(
        catchups[0].tick > last + chrono::Duration::seconds(2),
        "caught up the newest missed tick"
    );
    wait_until(PATIENCE, "the older missed tick recorded", || {
        env.records("beat").iter().any(|r| r["outcome"] == "missed")
    });
    let ticks: Vec<i64> = entries.iter().map(|e| e.tick.timestamp()).collect();
    assert_eq!(
        ticks.iter().collect::<HashSet<_>>().len(),
        ticks.len(),
        "a tick fired twice"
    );
}

#[test]
fn with_catchup_disabled_missed_ticks_are_recorded_not_run() {
    let env = Env::new().config(&format!(
        "[jobs.beat]\nschedule = \"@every 2s\"\ncatchup = \"0s\"\nshell = '{}'\n",
        ledger_line("start", "ledger")
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "a first fire", || !env.lines("ledger").is_empty());
    run.kill9();
    let last = ledger(&env, "ledger").last().unwrap().tick;
    wait_until(PATIENCE, "a tick to pass", || {
        Utc::now() > last + chrono::Duration::milliseconds(3500)
    });
    let _run = env.spawn_run("b");
    wait_until(PATIENCE, "the missed tick recorded", || {
        env.records("beat").iter().any(|r| r["outcome"] == "missed")
    });
    wait_until(PATIENCE, "a regular fire by b", || {
        ledger(&env, "ledger").iter().any(|e| e.instance == "b")
    });
    assert!(ledger(&env, "ledger")
        .iter()
        .all(|e| e.trigger == "schedule"));
}

#[test]
fn job_environment_and_working_dir() {
    let env = Env::new().config(
        "[jobs.envy]\nschedule = \"@every 1s\"\nworking_dir = \"sub\"\nenv = { GREETING = \"hello\" }\nshell = 'echo \"$GREETING $BGSCHED_JOB $(pwd) $BGSCHED_FENCING_TOKEN\" >> {dir}/out'\n",
    );
    std::fs::create_dir(env.path("sub")).unwrap();
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "a fire", || !env.lines("out").is_empty());
    let line = &env.lines("out")[0];
    let sub = env.path("sub").canonicalize().unwrap();
    assert_eq!(line, &format!("hello envy {} 1", sub.display()));
}

#[test]
fn a_second_sigint_kills_running_jobs_at_once_and_exits_130() {
    let env = Env::new().config(&format!(
        "[scheduler]\nshutdown_grace = \"10m\"\n[defaults]\nkill_grace = \"10m\"\n[jobs.work]\nschedule = \"@every 1s\"\nshell = 'trap \"\" TERM; {}; sleep 600'\n",
        ledger_line("start", "ledger"),
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "a run to start", || {
        !env.lines("ledger").is_empty()
    });
    run.signal(Signal::INT);
    wait_until(PATIENCE, "the first SIGINT to be seen", || {
        run.log_text().contains("SIGINT received (1)")
    });
    run.signal(Signal::INT);
    assert_eq!(
        run.wait_exit(PATIENCE),
        Some(130),
        "log:\n{}",
        run.log_text()
    );
    let run_id = ledger(&env, "ledger")[0].run_id.clone();
    wait_until(PATIENCE, "the killed run's record", || {
        env.records("work")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "killed")
    });
}

#[test]
fn json_logs_carry_job_run_and_tick_fields() {
    let env =
        Env::new().config("[jobs.talk]\nschedule = \"@every 1s\"\nshell = 'echo hello-from-job'\n");
    let log = env.path("json.log");
    let mut cmd = env
        .cmd(&["--log-format", "json", "run", "--instance-id", "j"])
        .0;
    cmd.stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(env.path("json.err")).unwrap());
    let mut child = cmd.spawn().unwrap();
    let read = || std::fs::read_to_string(env.path("json.err")).unwrap_or_default();
    wait_until(PATIENCE, "a job output line", || {
        read().contains("hello-from-job")
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    let mut saw_output = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "hello-from-job" {
            assert_eq!(v["job"], "talk");
            // stdout and stderr share one pipe, to keep their order.
            assert_eq!(v["stream"], "output");
            assert_eq!(v["run_id"].as_str().unwrap().len(), 36);
            saw_output = true;
        }
        if v["message"] == "run started" {
            assert_eq!(v["instance"], "j");
            assert!(v["tick"].as_str().unwrap().ends_with("+00:00"));
        }
    }
    assert!(saw_output, "{text}");
}

#[test]
fn a_run_whose_supervisor_is_killed_is_stopped_entirely_and_recorded_lost() {
    let env = Env::new().config(&format!(
        "[jobs.slow]\nschedule = \"@every 1s\"\nshell = '{}; sleep 600 & echo $! >> {{dir}}/grandchildren; wait'\n",
        ledger_line("start", "ledger")
    ));
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "a run with its grandchild", || {
        !env.lines("grandchildren").is_empty()
    });
    let first = ledger(&env, "ledger")[0].run_id.clone();
    let grandchild: i32 = env.lines("grandchildren")[0].parse().unwrap();
    let job_pid = env.job_view("slow")["running"][0]["pid"].as_i64().unwrap() as i32;
    let supervisor = parent_of(job_pid).expect("supervisor pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(supervisor).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    // Its direct child dies with it, and the scheduler kills the rest of the group.
    wait_until(PATIENCE, "the whole job to be gone", || {
        !alive(job_pid) && !alive(grandchild)
    });
    wait_until(PATIENCE, "the run recorded lost", || {
        env.records("slow")
            .iter()
            .any(|r| r["run_id"] == first.as_str() && r["outcome"] == "lost")
    });
    // The lock went with the supervisor: the schedule goes on.
    wait_until(PATIENCE, "the next run", || {
        env.lines("grandchildren").len() >= 2
    });
}

#[test]
fn the_scheduler_keeps_firing_after_its_binary_is_replaced_on_disk() {
    let env = Env::new().config(&format!(
        "[jobs.beat]\nschedule = \"@every 1s\"\nshell = '{}'\n",
        ledger_line("start", "ledger")
    ));
    // Run a copy of the binary, then delete it, as a package upgrade would.
    let copy = env.path("bgsched-copy");
    std::fs::copy(BIN, &copy).unwrap();
    let log = std::fs::File::create(env.path("copy.log")).unwrap();
    let mut child = std::process::Command::new(&copy)
        .args([
            "--config",
            env.path("jobs.toml").to_str().unwrap(),
            "--state-dir",
            env.state_dir().to_str().unwrap(),
            "run",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until(PATIENCE, "a first fire", || !env.lines("ledger").is_empty());
    std::fs::remove_file(&copy).unwrap();
    let before = env.lines("ledger").len();
    wait_until(PATIENCE, "fires after the binary is gone", || {
        env.lines("ledger").len() >= before + 2
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(env
        .records("beat")
        .iter()
        .all(|r| r["outcome"] != "start_failed"));
}

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A command whose wall clock (only: timers keep the real monotonic clock)
/// follows the libfaketime offset in `<dir>/faketime`, re-read on every call.
fn with_fake_clock(env: &Env, cmd: std::process::Command) -> std::process::Command {
    let mut cmd = cmd;
    cmd.env("LD_PRELOAD", FAKETIME_LIB)
        .env("FAKETIME_TIMESTAMP_FILE", env.path("faketime"))
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    cmd
}

#[test]
fn a_clock_stepped_back_fires_nothing_twice_and_says_so_in_the_log_metrics_and_list() {
    let env = Env::new().config(&format!(
        "[jobs.beat]\nschedule = \"@every 1s\"\nshell = '{}'\n",
        ledger_line("start", "ledger")
    ));
    env.write("faketime", "+0\n");
    let log = env.path("a.log");
    let mut cmd = with_fake_clock(
        &env,
        env.cmd(&["run", "--instance-id", "a", "--http", "127.0.0.1:0"])
            .0,
    );
    cmd.stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
    let run = Scheduler {
        child: cmd.spawn().expect("spawn bgsched run"),
        log,
        instance: "a".into(),
    };
    let port = run.http_port();
    wait_until(PATIENCE, "3 fires", || env.lines("ledger").len() >= 3);
    env.write("faketime", "-10m\n");
    let started = std::time::Instant::now();
    while !run.log_text().contains("the wall clock went back by") {
        assert!(
            started.elapsed() < PATIENCE,
            "no ERROR about the clock in\n{}",
            run.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let fired_before = ledger(&env, "ledger").len();
    let text = run.log_text();
    let line = text
        .lines()
        .find(|l| l.contains("the wall clock went back by"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    // How far (about 10 minutes, less the time it took to notice) and
    // until when firing waits.
    assert!(
        line.contains("went back by 9m") || line.contains("went back by 10m"),
        "{line}"
    );
    assert!(line.contains("firing waits until"), "{line}");
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics");
    assert_eq!(
        sample(&metrics, "bgsched_clock_steps_back_total"),
        1.0,
        "{metrics}"
    );
    // `list` on the same (stepped back) clock says why nothing fires.
    let out = with_fake_clock(&env, env.cmd(&["list"]).0)
        .output()
        .expect("list");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warning: job beat: its last fired tick")
            && stdout.contains("ahead of this clock"),
        "{stdout}"
    );
    // At most once: nothing fired again, not even a tick fired before.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let entries = ledger(&env, "ledger");
    assert!(
        entries.len() <= fired_before + 1,
        "fired after the step back"
    );
    let ticks: HashSet<i64> = entries.iter().map(|e| e.tick.timestamp_millis()).collect();
    assert_eq!(ticks.len(), entries.len(), "a tick fired twice");
}
