//! Jobs whose schedules are more than one expression: several schedules
//! (the union of their ticks) and active ranges (README "Several schedules
//! and active ranges"), standalone and in a 3-replica cluster on real etcd,
//! the jobs writing a ledger of the ticks they ran for.

mod common;

use chrono::{DateTime, SecondsFormat, Utc};
use common::etcd::Etcd;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// The ticks (as Unix seconds) the ledger's runs were started for, in the
/// order they ran, checking that none ran twice.
fn ledger_ticks(env: &Env) -> Vec<i64> {
    let ticks: Vec<i64> = env
        .lines("ledger")
        .iter()
        .map(|l| {
            let tick = l.split(' ').nth(1).unwrap_or_default();
            DateTime::parse_from_rfc3339(tick)
                .unwrap_or_else(|e| panic!("ledger line {l:?}: {e}"))
                .timestamp()
        })
        .collect();
    let unique: BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(unique.len(), ticks.len(), "a tick fired twice: {ticks:?}");
    ticks
}

fn union_of_2s_and_3s(ticks: impl Iterator<Item = i64>) -> Vec<i64> {
    ticks.filter(|t| t % 2 == 0 || t % 3 == 0).collect()
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A whole second `secs` from now.
fn in_secs(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() + 1 + secs, 0).unwrap()
}

#[test]
fn a_job_with_two_schedules_fires_their_union_and_a_shared_instant_once() {
    let env = Env::new().config(&format!(
        "[jobs.union]\nschedule = [\"*/2 * * * * *\", \"*/3 * * * * *\"]\nshell = '{}'\n",
        ledger_line("start", "ledger")
    ));
    let _run = env.spawn_run("a");
    // 13 s hold at least two instants both expressions share.
    wait_until(PATIENCE, "13 s of fires", || {
        let t = ledger_ticks(&env);
        t.len() >= 2 && t[t.len() - 1] - t[0] >= 13
    });
    let ticks = ledger_ticks(&env);
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    assert_eq!(
        ticks,
        union_of_2s_and_3s(first..=last),
        "not the union of the two schedules' ticks"
    );
    assert!(ticks.iter().filter(|t| *t % 6 == 0).count() >= 2);
    assert_eq!(
        env.job_view("union")["schedule"],
        "*/2 * * * * * | */3 * * * * *"
    );
}

#[test]
fn no_fire_outside_the_active_range_and_next_and_list_say_so() {
    let from = in_secs(4);
    let until = from + chrono::Duration::seconds(4);
    let env = Env::new().config(&format!(
        "[jobs.window]\nschedule = \"@every 1s\"\ncatchup = \"1h\"\n\
         active_from = \"{}\"\nactive_until = \"{}\"\nshell = '{}'\n",
        rfc(from),
        rfc(until),
        ledger_line("start", "ledger")
    ));
    // Before it: the first fire is at its start, and `next` says why.
    let out = env.cmd(&["next", "window", "-n", "2"]).run().success();
    assert_eq!(
        out.stdout.lines().next(),
        Some(rfc(from).replace('Z', "+00:00").as_str())
    );
    assert!(out.stderr.contains("is active from"), "{}", out.stderr);
    let view = env.job_view("window");
    assert_eq!(view["active_from"], rfc(from));
    assert_eq!(view["active_until"], rfc(until));
    env.cmd(&["list"])
        .run()
        .success()
        .stdout_has("when it becomes active");

    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the range over", || {
        Utc::now() > until + chrono::Duration::seconds(2)
    });
    let ticks = ledger_ticks(&env);
    let want: Vec<i64> = (from.timestamp()..until.timestamp()).collect();
    assert_eq!(ticks, want, "fires outside [{from}, {until})");
    // A restart after it, with catch-up on: nothing to catch up.
    run.kill9();
    let _run = env.spawn_run("b");
    wait_until(PATIENCE, "the restarted scheduler up", || {
        env.list_json()["leader"]["instance"] == "b"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(ledger_ticks(&env), want, "a fire after the range");
    let out = env.cmd(&["next", "window"]).run().success();
    assert!(
        out.stderr.contains("its active range ended"),
        "{}",
        out.stderr
    );
    env.cmd(&["list"])
        .run()
        .success()
        .stdout_has("never (active until");
    env.cmd(&["check"])
        .run()
        .success()
        .stderr_has("its active range ended at");
    // A manual run is not bound by the range.
    env.cmd(&["trigger", "window"]).run().success();
    let lines = env.lines("ledger");
    assert_eq!(lines.len(), want.len() + 1, "{lines:?}");
    assert!(lines[want.len()].contains(" manual "), "{lines:?}");
}

#[test]
fn in_a_cluster_two_schedules_and_a_range_fire_once_each_across_a_leader_kill_9() {
    let etcd = Etcd::start();
    let until = in_secs(14);
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/relations\"\nlease_ttl = \"2s\"\n\n\
         [jobs.union]\nschedule = [\"*/2 * * * * *\", \"*/3 * * * * *\"]\n\
         active_until = \"{}\"\nshell = '{}'\n",
        etcd.endpoint(),
        rfc(until),
        ledger_line("start", "ledger")
    ));
    let mut replicas: Vec<Scheduler> = ["a", "b", "c"].map(|i| env.spawn_run(i)).into();
    let leader = env.leader();
    wait_until(PATIENCE, "4 fires", || ledger_ticks(&env).len() >= 4);
    let at = ["a", "b", "c"].iter().position(|i| *i == leader).unwrap();
    replicas[at].kill9();
    wait_until(PATIENCE, "the range over", || {
        Utc::now() > until + chrono::Duration::seconds(3)
    });
    let ticks = ledger_ticks(&env);
    let allowed = union_of_2s_and_3s(ticks[0]..until.timestamp());
    for t in &ticks {
        assert!(
            allowed.contains(t),
            "tick {t} is not one of the schedules' in range: {ticks:?}"
        );
    }
    let instances: BTreeSet<String> = env
        .lines("ledger")
        .iter()
        .filter_map(|l| l.split(' ').nth(5).map(str::to_string))
        .collect();
    assert!(
        instances.len() >= 2,
        "no replica took over after the kill: {instances:?}"
    );
    // What the failover cost is recorded, not lost: every tick in range
    // ran, was caught up or is in the job's history as missed or skipped.
    let fired = ticks.len() as u64;
    wait_until(PATIENCE, "every tick accounted for", || {
        let job = env.job_view("union");
        let missed = job["recent_missed"].as_u64().unwrap_or(0);
        let skipped = job["recent_skips"].as_u64().unwrap_or(0);
        fired + missed + skipped >= allowed.len() as u64
    });
}

/// Each instance of a service (by the pid of its shell), with the instance
/// of bgsched it ran under and the first and last of its heartbeats.
#[derive(Debug, Clone)]
struct Life {
    pid: i32,
    instance: String,
    first: f64,
    last: f64,
}

/// A service's job: a heartbeat to the ledger every 0.1 s, `beats` of them
/// (forever if `None`).
fn heartbeat(beats: Option<u32>) -> String {
    let line = "echo \"beat $$ $BGSCHED_INSTANCE $(date +%s.%N)\" >> {dir}/ledger; sleep 0.1";
    match beats {
        Some(n) => format!("for i in $(seq 1 {n}); do {line}; done"),
        None => format!("while :; do {line}; done"),
    }
}

/// The lives in the ledger, by their first beat, checking that no two
/// overlap: at no moment did two instances run.
fn lives(env: &Env) -> Vec<Life> {
    let mut lives: Vec<Life> = Vec::new();
    for l in env.lines("ledger") {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 4, "malformed ledger line {l:?}");
        let (pid, t): (i32, f64) = (f[1].parse().unwrap(), f[3].parse().unwrap());
        match lives.iter_mut().find(|x| x.pid == pid) {
            Some(x) => x.last = x.last.max(t),
            None => lives.push(Life {
                pid,
                instance: f[2].to_string(),
                first: t,
                last: t,
            }),
        }
    }
    lives.sort_by(|a, b| a.first.total_cmp(&b.first));
    for pair in lives.windows(2) {
        assert!(
            pair[1].first > pair[0].last,
            "two instances alive at once: {:?} and {:?}; all: {lives:#?}",
            pair[0],
            pair[1]
        );
    }
    lives
}

/// Ends what is left of a service's instances when a test ends, passed or
/// failed: a service never ends by itself, and the test's schedulers die
/// by SIGKILL, leaving their supervisors.
struct EndServices<'a>(&'a Env);

impl Drop for EndServices<'_> {
    fn drop(&mut self) {
        let pids: BTreeSet<i32> = self
            .0
            .lines("ledger")
            .iter()
            .filter_map(|l| l.split(' ').nth(1)?.parse().ok())
            .collect();
        for pid in pids {
            // Each instance leads its own process group.
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
        }
    }
}

fn now_secs() -> f64 {
    Utc::now().timestamp_micros() as f64 / 1e6
}

#[test]
fn a_service_is_restarted_after_it_exits_taken_over_after_a_kill_9_and_stopped_by_sigterm() {
    let env = Env::new().config(&format!(
        "[jobs.worker]\nschedule = \"@continuous\"\nretry_backoff = \"1s\"\nkill_grace = \"2s\"\n\
         shell = '{}'\n",
        heartbeat(Some(15))
    ));
    let _end = EndServices(&env);
    env.cmd(&["next", "worker"])
        .run()
        .success()
        .stderr_has("is a service (@continuous)");
    env.cmd(&["check"])
        .run()
        .success()
        .stdout_has("service: always running");
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "three instances", || lives(&env).len() >= 3);
    let l = lives(&env);
    for pair in l.windows(2) {
        let gap = pair[1].first - pair[0].last;
        assert!(gap > 0.5, "restarted before its backoff: {gap:.2}s; {l:#?}");
    }
    let view = env.job_view("worker");
    assert!(view["service"]["restarts"].as_u64().unwrap() >= 2, "{view}");
    let recs = env.records("worker");
    assert!(recs.iter().all(|r| r["trigger"] == "service"), "{recs:#?}");

    // The scheduler dies: the next one has the orphaned instance stopped,
    // then starts its own, never beside it.
    wait_until(PATIENCE, "an instance running", || {
        lives(&env)
            .last()
            .is_some_and(|x| now_secs() - x.last < 0.5)
    });
    env.cmd(&["list"]).run().success().stdout_has("service up");
    let running = lives(&env).len();
    run.kill9();
    let mut run = env.spawn_run("b");
    wait_until(PATIENCE, "an instance under the new scheduler", || {
        lives(&env).iter().any(|x| x.instance == "b")
    });
    let l = lives(&env);
    assert!(l.len() > running);
    wait_until(PATIENCE, "the orphaned instance recorded cancelled", || {
        env.records("worker").iter().any(|r| {
            r["outcome"] == "cancelled"
                && r["reason"]
                    .as_str()
                    .is_some_and(|w| w.contains("the service moves to the leader"))
        })
    });

    // SIGTERM stops the running instance at once and starts no other.
    wait_until(PATIENCE, "an instance running", || {
        lives(&env)
            .last()
            .is_some_and(|x| now_secs() - x.last < 0.5)
    });
    run.signal(rustix::process::Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0));
    let stopped = now_secs();
    let l = lives(&env);
    let last = l.last().unwrap();
    assert!(
        last.last < stopped,
        "beats after the scheduler stopped: {last:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        lives(&env).len(),
        l.len(),
        "an instance started after SIGTERM"
    );
}

/// Waits until the newest instance runs under `instance` and beats.
fn running_under(env: &Env, instance: &str) -> Life {
    let mut newest = None;
    wait_until(
        PATIENCE,
        &format!("the service running under {instance}"),
        || {
            newest = lives(env).last().cloned();
            newest
                .as_ref()
                .is_some_and(|x| x.instance == instance && now_secs() - x.last < 0.5)
        },
    );
    newest.expect("checked")
}

fn leader_other_than(env: &Env, old: &str) -> String {
    let mut leader = None;
    wait_until(PATIENCE, "another leader", || {
        leader = env.list_json()["leader"]["instance"]
            .as_str()
            .filter(|l| *l != old)
            .map(str::to_string);
        leader.is_some()
    });
    leader.expect("checked")
}

#[test]
fn in_a_cluster_one_service_instance_runs_across_sigstop_kill_9_and_sigterm_of_leaders() {
    let etcd = Etcd::start();
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/services\"\nlease_ttl = \"2s\"\n\n\
         [jobs.worker]\nschedule = \"@continuous\"\nretry_backoff = \"1s\"\nkill_grace = \"2s\"\n\
         shell = '{}'\n",
        etcd.endpoint(),
        heartbeat(None)
    ));
    let _end = EndServices(&env);
    let names = ["a", "b", "c"];
    let mut replicas: Vec<Scheduler> = names.map(|i| env.spawn_run(i)).into();
    let index = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let leader = env.leader();
    let first = running_under(&env, &leader);

    // SIGSTOP of its leader: the next leader has the instance (whose own
    // supervisor still runs) stopped, then starts it under itself; every
    // check of the ledger (`lives`) also finds no two alive at once.
    replicas[index(&leader)].signal(rustix::process::Signal::STOP);
    let next = leader_other_than(&env, &leader);
    let second = running_under(&env, &next);
    assert_ne!(second.pid, first.pid);
    replicas[index(&leader)].signal(rustix::process::Signal::CONT);

    // kill -9 of that leader: its instance is orphaned, and the one after
    // takes the service over the same way.
    replicas[index(&next)].kill9();
    let third_leader = leader_other_than(&env, &next);
    let third = running_under(&env, &third_leader);
    assert_ne!(third.pid, second.pid);
    replicas[index(&next)] = env.spawn_run(&next);

    // The instance exits (killed): the leader starts the next one.
    let pid = rustix::process::Pid::from_raw(third.pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    wait_until(PATIENCE, "a restart", || {
        lives(&env).last().is_some_and(|x| x.pid != third.pid)
    });
    let fourth = running_under(&env, &env.leader());

    // SIGTERM of that leader stops it; the next leader starts it again.
    replicas[index(&fourth.instance)].signal(rustix::process::Signal::TERM);
    let last_leader = leader_other_than(&env, &fourth.instance);
    running_under(&env, &last_leader);
    let all = lives(&env);
    // Each instance that ended has its record: moved ones `cancelled`.
    wait_until(PATIENCE, "the ended instances recorded", || {
        let out = env.cmd(&["history", "worker", "--json"]).run().success();
        let recs: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        let moved = recs
            .iter()
            .filter(|r| {
                r["outcome"] == "cancelled"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|w| w.contains("the service moves to the leader"))
            })
            .count();
        moved >= 2 && recs.iter().all(|r| r["trigger"] == "service")
    });
    println!("service lives: {all:#?}");
}

/// Whether the newest instance beat within the last half second.
fn beating(env: &Env) -> bool {
    lives(env).last().is_some_and(|x| now_secs() - x.last < 0.5)
}

#[test]
fn a_reload_that_disables_a_service_stops_it_and_a_pause_holds_its_restart() {
    let service = |enabled: bool| {
        format!(
            "[jobs.worker]\nschedule = \"@continuous\"\nretry_backoff = \"1s\"\nkill_grace = \"2s\"\n\
             enabled = {enabled}\nshell = '{}'\n",
            heartbeat(None)
        )
    };
    let env = Env::new().config(&service(true));
    let _end = EndServices(&env);
    // A manual run started while no scheduler runs: the scheduler has it
    // stopped and starts its own instance.
    env.cmd(&["trigger", "worker", "--detach"]).run().success();
    wait_until(PATIENCE, "the manual run beating", || beating(&env));
    let run = env.spawn_run("a");
    wait_until(PATIENCE, "the scheduler's own instance", || {
        lives(&env).len() >= 2 && beating(&env)
    });
    let manual = env
        .records("worker")
        .into_iter()
        .find(|r| r["trigger"] == "manual")
        .expect("the manual run's record");
    wait_until(PATIENCE, "the manual run recorded cancelled", || {
        env.records("worker").iter().any(|r| {
            r["run_id"] == manual["run_id"]
                && r["outcome"] == "cancelled"
                && r["reason"]
                    .as_str()
                    .is_some_and(|w| w.contains("the service moves to the leader"))
        })
    });
    // `logs` of the running instance says where its output so far is.
    let mut running_id = String::new();
    wait_until(PATIENCE, "the running instance listed", || {
        running_id = env.job_view("worker")["running"][0]["run_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        !running_id.is_empty()
    });
    env.cmd(&["logs", &running_id])
        .run()
        .success()
        .stderr_has("is still running; its output so far: bgsched logs -f");
    // A manual run while it runs is refused.
    env.cmd(&["trigger", "worker"])
        .run()
        .code(75)
        .stderr_has("skipped (overlap = \"skip\"): already running since");
    env.write("jobs.toml", &service(false));
    run.signal(rustix::process::Signal::HUP);
    wait_until(PATIENCE, "the service stopped", || !beating(&env));
    let stopped = lives(&env).len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lives(&env).len(), stopped, "started again while disabled");
    assert!(!beating(&env));
    env.write("jobs.toml", &service(true));
    run.signal(rustix::process::Signal::HUP);
    wait_until(PATIENCE, "running again", || {
        lives(&env).len() > stopped && beating(&env)
    });

    // Paused, a running instance runs on; one that exits is not restarted
    // until the job is resumed.
    env.cmd(&["pause", "worker"]).run().success();
    std::thread::sleep(Duration::from_secs(1));
    assert!(beating(&env), "the pause stopped the running instance");
    env.cmd(&["list"])
        .run()
        .success()
        .stdout_has("paused: not restarted when it exits");
    let l = lives(&env);
    let pid = rustix::process::Pid::from_raw(l.last().unwrap().pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    wait_until(PATIENCE, "the instance gone", || !beating(&env));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lives(&env).len(), l.len(), "restarted while paused");
    env.cmd(&["list"])
        .run()
        .success()
        .stdout_has("paused (service)");
    env.cmd(&["resume", "worker"]).run().success();
    wait_until(PATIENCE, "restarted after the resume", || {
        lives(&env).len() > l.len() && beating(&env)
    });
}

/// One run of a group's job as its ledger lines tell: job, start, end
/// (`None` while it still runs).
#[derive(Debug, Clone)]
struct Span {
    job: String,
    start: f64,
    end: Option<f64>,
}

/// A group job's shell: a start and an end line around `secs` of work.
fn spanning(secs: f64) -> String {
    let line = |event: &str| {
        format!("echo \"{event} $BGSCHED_JOB $BGSCHED_RUN_ID $BGSCHED_INSTANCE $(date +%s.%N)\" >> {{dir}}/spans")
    };
    format!("{}; sleep {secs}; {}", line("start"), line("end"))
}

fn spans(env: &Env) -> Vec<Span> {
    let mut runs: Vec<(String, Span)> = Vec::new();
    for l in env.lines("spans") {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 5, "malformed line {l:?}");
        let t: f64 = f[4].parse().unwrap();
        match (f[0], runs.iter_mut().find(|(id, _)| id == f[2])) {
            ("start", None) => runs.push((
                f[2].to_string(),
                Span {
                    job: f[1].to_string(),
                    start: t,
                    end: None,
                },
            )),
            ("end", Some((_, s))) => s.end = Some(t),
            _ => panic!("line out of order: {l:?}"),
        }
    }
    runs.into_iter().map(|(_, s)| s).collect()
}

/// The most runs of `jobs` alive at one moment, by their ledger lines.
fn most_at_once(spans: &[Span], jobs: &[&str]) -> usize {
    let mut events: Vec<(f64, i32)> = Vec::new();
    for s in spans.iter().filter(|s| jobs.contains(&s.job.as_str())) {
        events.push((s.start, 1));
        events.push((s.end.unwrap_or(f64::INFINITY), -1));
    }
    // An end before a start at the same instant: they did not overlap.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0, 0);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    most as usize
}

fn group_full_skips(records: &[serde_json::Value], group: &str) -> usize {
    let prefix = format!("group {group} full");
    records
        .iter()
        .filter(|r| {
            r["outcome"] == "skipped"
                && r["reason"].as_str().is_some_and(|w| w.starts_with(&prefix))
        })
        .count()
}

fn history_json(env: &Env, job: &str) -> Vec<serde_json::Value> {
    let out = env
        .cmd(&["history", job, "-n", "500", "--json"])
        .run()
        .success();
    serde_json::from_str(&out.stdout).expect("history --json")
}

const GROUP_JOBS: &str = "[groups.db]\nlimit = 1\n\n[groups.pair]\nlimit = 2\n\n\
    [jobs.a]\nschedule = \"@every 1s\"\ngroup = \"db\"\nshell = '{a}'\n\n\
    [jobs.b]\nschedule = \"@every 1s\"\ngroup = \"db\"\nshell = '{a}'\n\n\
    [jobs.q]\nschedule = \"@every 2s\"\ngroup = \"db\"\noverlap = \"queue\"\nshell = '{q}'\n\n\
    [jobs.x]\nschedule = \"@every 1s\"\ngroup = \"pair\"\nshell = '{a}'\n\n\
    [jobs.y]\nschedule = \"@every 1s\"\ngroup = \"pair\"\nshell = '{a}'\n\n\
    [jobs.z]\nschedule = \"@every 1s\"\ngroup = \"pair\"\nshell = '{a}'\n";

fn group_jobs() -> String {
    GROUP_JOBS
        .replace("{a}", &spanning(0.6))
        .replace("{q}", &spanning(0.3))
}

/// README "Concurrency groups": at most `limit` runs of a group's jobs at
/// once; a fire that finds the group full skips (`overlap = "skip"`, with
/// an entry naming the group) or waits for a place (`"queue"`).
#[test]
fn a_group_holds_at_most_its_limit_a_full_group_skips_or_queues() {
    let env = Env::new().config(&group_jobs());
    let _run = env.spawn_run("a");
    let began = now_secs();
    wait_until(PATIENCE, "12 s of colliding fires", || {
        now_secs() - began > 12.0 && spans(&env).iter().filter(|s| s.job == "q").count() >= 3
    });
    let s = spans(&env);
    assert_eq!(
        most_at_once(&s, &["a", "b", "q"]),
        1,
        "group db ran more than one at once: {s:#?}"
    );
    assert_eq!(
        most_at_once(&s, &["x", "y", "z"]),
        2,
        "group pair is not held at 2: {s:#?}"
    );
    let skipped: usize = ["a", "b"]
        .iter()
        .map(|j| group_full_skips(&env.records(j), "db"))
        .sum();
    assert!(skipped >= 5, "no 'group db full' skips recorded");
    // A queueing job waits for its place instead of skipping.
    assert_eq!(group_full_skips(&env.records("q"), "db"), 0);
    assert!(
        env.records("b")
            .iter()
            .filter_map(|r| r["reason"].as_str())
            .any(|w| w.starts_with("group db full: held by run ")),
        "a group-full skip does not name the run holding the group"
    );
}

/// The same across a 3-replica cluster for 60 s, with the leader killed
/// (`kill -9`) and another one stopped (SIGSTOP) on the way: a place is
/// held by the run's lease, so it outlives its scheduler and frees when
/// the run ends or its lease expires.
#[test]
fn in_a_cluster_a_group_of_one_never_overlaps_across_a_leader_kill_9_and_sigstop() {
    let etcd = Etcd::start();
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/groups\"\nlease_ttl = \"2s\"\n\n{}",
        etcd.endpoint(),
        group_jobs()
    ));
    let names = ["a", "b", "c"];
    let mut replicas: Vec<Scheduler> = names.map(|i| env.spawn_run(i)).into();
    let began = now_secs();
    let leader = env.leader();
    wait_until(PATIENCE, "20 s of fires", || now_secs() - began > 20.0);
    replicas[names.iter().position(|i| *i == leader).unwrap()].kill9();
    let second = leader_other_than(&env, &leader);
    wait_until(PATIENCE, "40 s of fires", || now_secs() - began > 40.0);
    let stopped = names.iter().position(|i| *i == second).unwrap();
    replicas[stopped].signal(rustix::process::Signal::STOP);
    wait_until(PATIENCE, "60 s of fires", || now_secs() - began > 60.0);
    replicas[stopped].signal(rustix::process::Signal::CONT);
    let s = spans(&env);
    assert_eq!(
        most_at_once(&s, &["a", "b", "q"]),
        1,
        "group db ran more than one at once: {s:#?}"
    );
    assert!(
        most_at_once(&s, &["x", "y", "z"]) <= 2,
        "group pair ran more than 2 at once: {s:#?}"
    );
    let instances: BTreeSet<String> = env
        .lines("spans")
        .iter()
        .filter_map(|l| l.split(' ').nth(3).map(str::to_string))
        .collect();
    assert!(
        instances.len() >= 3,
        "the group's runs did not move with the leader: {instances:?}"
    );
    assert!(
        s.iter().filter(|r| r.job == "q").count() >= 20,
        "q did not keep running: {s:#?}"
    );
    assert!(group_full_skips(&history_json(&env, "b"), "db") >= 10);
    assert_eq!(group_full_skips(&history_json(&env, "q"), "db"), 0);
}

/// README "Concurrency groups": manual runs count and are counted like
/// scheduled ones, and `"replace"` replaces only its own job's run: with a
/// triggered run holding the group of one, a triggered skipping job is
/// refused for the full group, and a triggered replacing job waits for the
/// place instead of stopping the other job's run, which ends on its own.
#[test]
fn manual_runs_count_in_a_group_and_replace_never_stops_another_jobs_run() {
    let env = Env::new().config(&format!(
        "[groups.db]\nlimit = 1\n\n\
         [jobs.a]\nschedule = \"@yearly\"\ngroup = \"db\"\nshell = '{}'\n\n\
         [jobs.b]\nschedule = \"@yearly\"\ngroup = \"db\"\nshell = '{}'\n\n\
         [jobs.r]\nschedule = \"@yearly\"\ngroup = \"db\"\noverlap = \"replace\"\nshell = '{}'\n",
        spanning(4.0),
        spanning(0.1),
        spanning(0.1)
    ));
    let a = env.trigger_detached("a");
    wait_until(PATIENCE, "a's run to start", || {
        spans(&env).iter().any(|s| s.job == "a")
    });
    env.cmd(&["trigger", "b"])
        .run()
        .code(75)
        .stderr_has("job \"b\" skipped (overlap = \"skip\"): group db full: held by run ");
    env.trigger_detached("r");
    wait_until(PATIENCE, "r's run to end", || {
        spans(&env).iter().any(|s| s.job == "r" && s.end.is_some())
    });
    let s = spans(&env);
    let of = |job: &str| s.iter().find(|x| x.job == job).cloned().unwrap();
    let (ran_a, ran_r) = (of("a"), of("r"));
    let a_end = ran_a.end.expect("a was stopped before its end");
    assert!(a_end - ran_a.start >= 3.9, "a did not run its 4 s: {s:#?}");
    assert!(
        ran_r.start >= a_end,
        "r started before a left the group: {s:#?}"
    );
    assert!(
        !s.iter().any(|x| x.job == "b"),
        "b ran in a full group: {s:#?}"
    );
    let recorded = env.records("a");
    assert!(
        recorded
            .iter()
            .any(|r| r["run_id"] == a.as_str() && r["outcome"] == "success"),
        "{recorded:#?}"
    );
}

/// README "Jobs after jobs": a dependent's run takes no `jitter`. With a
/// jitter of an hour, each run after an upstream run still starts within
/// seconds of that upstream run's end.
#[test]
fn a_dependents_run_takes_no_jitter() {
    let env = Env::new().config(&format!(
        "[jobs.extract]\nschedule = \"@every 1s\"\nshell = '{}'\n\n\
         [jobs.load]\nafter = [\"extract\"]\njitter = \"1h\"\nshell = '{}'\n",
        step_line("ok"),
        step_line("ok")
    ));
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "three loads", || {
        steps(&env).iter().filter(|s| s.job == "load").count() >= 3
    });
    let all = steps(&env);
    for load in all.iter().filter(|s| s.job == "load") {
        let up = all
            .iter()
            .find(|s| s.run_id == load.upstream)
            .unwrap_or_else(|| panic!("no extract run {}: {all:#?}", load.upstream));
        assert!(
            load.at - up.at < 5.0,
            "load started {:.1} s after its upstream run: {all:#?}",
            load.at - up.at
        );
    }
}

/// One line a job of an `after` chain wrote: `<job> <run id> <upstream
/// run id or -> <trigger> <unix time>`.
#[derive(Debug, Clone)]
struct Step {
    job: String,
    run_id: String,
    upstream: String,
    trigger: String,
    at: f64,
}

fn step_line(job_outcome: &str) -> String {
    format!(
        "echo \"$BGSCHED_JOB $BGSCHED_RUN_ID ${{BGSCHED_UPSTREAM_RUN_ID:--}} $BGSCHED_TRIGGER $(date +%s.%N) {job_outcome}\" >> {{dir}}/steps"
    )
}

fn steps(env: &Env) -> Vec<Step> {
    env.lines("steps")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert!(f.len() >= 5, "malformed line {l:?}");
            Step {
                job: f[0].to_string(),
                run_id: f[1].to_string(),
                upstream: f[2].to_string(),
                trigger: f[3].to_string(),
                at: f[4].parse().unwrap(),
            }
        })
        .collect()
}

/// The run ids of `job`'s runs whose lines end with `word`.
fn runs_of(env: &Env, job: &str, word: &str) -> Vec<String> {
    env.lines("steps")
        .iter()
        .filter(|l| l.starts_with(&format!("{job} ")) && l.ends_with(&format!(" {word}")))
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect()
}

/// `dependent`'s runs by the upstream run that started each, checking that
/// no upstream run started two and that each says `after`.
fn started_after(env: &Env, dependent: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for s in steps(env).into_iter().filter(|s| s.job == dependent) {
        assert_eq!(s.trigger, "after", "{s:?}");
        assert!(
            seen.insert(s.upstream.clone()),
            "two runs of {dependent} after upstream run {}",
            s.upstream
        );
    }
    seen
}

/// Extract succeeds on every other tick and fails on the others; a load
/// follows its successes, an alert its failures.
fn chain_jobs(extract_every: &str) -> String {
    format!(
        "[jobs.extract]\nschedule = \"@every {extract_every}\"\n\
         shell = 'sleep 0.2; if [ $(( $(date -d \"$BGSCHED_SCHEDULED_AT\" +%s) / 2 % 2 )) = 0 ]; then {} ; else {} ; exit 1; fi'\n\n\
         [jobs.load]\nafter = [\"extract\"]\nshell = '{}'\n\n\
         [jobs.alert]\nafter = [{{ job = \"extract\", on = \"failure\" }}]\nshell = '{}'\n\n\
         [jobs.b]\nschedule = \"@every 3s\"\nshell = '{}'\n\n\
         [jobs.report]\nafter = [\"load\", \"b\"]\nafter_all = true\nshell = '{}'\n",
        step_line("ok"),
        step_line("failed"),
        step_line("ok"),
        step_line("ok"),
        step_line("ok"),
        step_line("ok"),
    )
}

/// Every run in `upstream` that ended more than 3 s ago has exactly one
/// record of `dependent` naming it (a run, or a skip or `lost` entry: what
/// a tick's claim may also end as), a successful one has its run in the
/// ledger, and no run of `dependent` names another upstream run.
fn asked_again(r: &serde_json::Value) -> bool {
    r["outcome"] == "lost"
        && r["reason"]
            .as_str()
            .is_some_and(|w| w.contains("asked for again"))
}

fn each_once(env: &Env, upstream: &[String], dependent: &str) {
    let by_id: std::collections::BTreeMap<String, f64> =
        steps(env).into_iter().map(|s| (s.run_id, s.at)).collect();
    let settled = now_secs() - 3.0;
    let ran = started_after(env, dependent);
    let records: Vec<serde_json::Value> = history_json(env, dependent)
        .into_iter()
        .filter(|r| r["outcome"] != "running")
        .collect();
    for id in upstream {
        if by_id.get(id).is_none_or(|t| *t >= settled) {
            continue;
        }
        // A claim whose leader died before starting it is recorded lost
        // and asked for again: that entry is not the upstream run's one.
        let of: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["upstream"]["run_id"] == id.as_str() && !asked_again(r))
            .collect();
        assert_eq!(
            of.len(),
            1,
            "{dependent}: records after upstream run {id}: {of:#?}"
        );
        match of[0]["outcome"].as_str() {
            Some("success") => assert!(
                ran.contains(id),
                "{dependent} after {id}: recorded, not run"
            ),
            Some("skipped" | "lost") => assert!(!ran.contains(id)),
            other => panic!("{dependent} after {id} ended {other:?}"),
        }
    }
    for id in &ran {
        assert!(
            upstream.contains(id),
            "{dependent}: a run after {id}, which is not one of {upstream:?}"
        );
    }
}

/// Each `report` run (fan-in) used up at least one run of each job it
/// waits for: there are never more reports than runs of either that
/// started before the last report. (Runs after each end instead would
/// make about as many reports as both together.)
fn fan_in_waited(env: &Env) -> usize {
    let all = steps(env);
    let reports: Vec<&Step> = all.iter().filter(|s| s.job == "report").collect();
    let Some(last) = reports.last() else { return 0 };
    for up in ["load", "b"] {
        let before = all.iter().filter(|s| s.job == up && s.at < last.at).count();
        assert!(
            reports.len() <= before,
            "{} report runs, but only {before} runs of {up} before the last: {all:#?}",
            reports.len()
        );
    }
    reports.len()
}

/// README "Jobs after jobs": a dependent runs once per upstream run that
/// ended the way it asks (success by default, failure for the alert), with
/// `BGSCHED_TRIGGER=after` and the upstream run's id; an `after_all` job
/// runs once all of its upstream jobs have ended since its last run.
#[test]
fn a_dependent_runs_once_per_upstream_run_that_ended_its_way_and_fan_in_waits_for_all() {
    let env = Env::new().config(&chain_jobs("1s"));
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "three loads, alerts and reports", || {
        let s = steps(&env);
        ["load", "alert", "report"]
            .iter()
            .all(|j| s.iter().filter(|x| x.job == *j).count() >= 3)
    });
    each_once(&env, &runs_of(&env, "extract", "ok"), "load");
    each_once(&env, &runs_of(&env, "extract", "failed"), "alert");
    assert!(fan_in_waited(&env) >= 3);
    let load = env.job_view("load");
    assert_eq!(load["after"], "after extract", "{load}");
    assert_eq!(
        env.job_view("extract")["then"],
        serde_json::json!(["alert", "load"])
    );
    env.cmd(&["next", "load"])
        .run()
        .success()
        .stderr_has("has no schedule of its own: it runs after extract");
}

/// In a 3-replica cluster the dependent's run is asked for in the same
/// transaction as the upstream's record, so a leader killed (`kill -9`)
/// right after an upstream run ended still leaves exactly one run of the
/// dependent, started by the next leader.
#[test]
fn in_a_cluster_a_dependent_runs_once_per_upstream_run_across_a_leader_kill_9_right_after_it() {
    let etcd = Etcd::start();
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/after\"\nlease_ttl = \"2s\"\n\n{}",
        etcd.endpoint(),
        chain_jobs("2s")
    ));
    let names = ["a", "b", "c"];
    let mut replicas: Vec<Scheduler> = names.map(|i| env.spawn_run(i)).into();
    let leader = env.leader();
    wait_until(PATIENCE, "a load", || {
        !started_after(&env, "load").is_empty()
    });
    // The moment the next extract run has ended.
    let before = runs_of(&env, "extract", "ok").len();
    wait_until(PATIENCE, "another successful extract", || {
        runs_of(&env, "extract", "ok").len() > before
    });
    let ended = runs_of(&env, "extract", "ok").last().cloned().unwrap();
    replicas[names.iter().position(|i| *i == leader).unwrap()].kill9();
    leader_other_than(&env, &leader);
    // It runs once, by whichever leader: also when the leader died
    // between its claim and its start (that claim is recorded lost and
    // the run asked for again).
    wait_until(
        PATIENCE,
        "the load after the extract that ended as its leader died",
        || started_after(&env, "load").contains(&ended),
    );
    let after_kill = steps(&env).len();
    wait_until(PATIENCE, "more of the chain under the new leader", || {
        let s = steps(&env);
        s.len() > after_kill + 6
            && s.iter()
                .any(|x| x.job == "report" && x.at > now_secs() - 20.0)
    });
    each_once(&env, &runs_of(&env, "extract", "ok"), "load");
    each_once(&env, &runs_of(&env, "extract", "failed"), "alert");
    assert!(fan_in_waited(&env) >= 1);
}

/// In a cluster a dependent's claim whose leader died before any
/// supervisor took it over (its marker expires naming no supervisor) is
/// recorded lost and asked for again in the same step, so the dependent
/// still runs once. The dead leader's marker is written here as its claim
/// writes it, bound to a lease nobody renews.
#[test]
fn in_a_cluster_a_dependents_claim_that_no_supervisor_took_over_is_asked_for_again() {
    use common::etcd::{base64_encode, http};
    let etcd = Etcd::start();
    let env = Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/again\"\nlease_ttl = \"2s\"\n\n\
         [jobs.extract]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n\n\
         [jobs.load]\nafter = [\"extract\"]\nshell = '{}'\n",
        etcd.endpoint(),
        step_line("ok")
    ));
    let _run = env.spawn_run("a");
    env.leader();
    let port = etcd.client_port();
    let (status, granted) = http(port, "POST", "/v3/lease/grant", Some(r#"{"TTL": 2}"#)).unwrap();
    assert_eq!(status, 200, "{granted}");
    let lease: serde_json::Value = serde_json::from_str(&granted).unwrap();
    let lease = lease["ID"].as_str().unwrap().to_string();
    let (claimed, upstream) = (
        "01a23900-0000-7000-8000-000000000001",
        "01a23900-0000-7000-8000-0000000000aa",
    );
    let marker = serde_json::json!({
        "run_id": claimed, "job": "load", "tick": rfc(Utc::now()), "trigger": "after",
        "instance": "gone", "term": 1, "outcome": "running", "started_at": rfc(Utc::now()),
        "upstream": { "job": "extract", "run_id": upstream, "outcome": "success" },
    });
    let body = format!(
        r#"{{"key":"{}","value":"{}","lease":"{lease}"}}"#,
        base64_encode(format!("/again/active/load/{claimed}").as_bytes()),
        base64_encode(marker.to_string().as_bytes())
    );
    let (status, put) = http(port, "POST", "/v3/kv/put", Some(&body)).unwrap();
    assert_eq!(status, 200, "{put}");
    wait_until(
        PATIENCE,
        "load run after the upstream its lost claim named",
        || started_after(&env, "load").contains(upstream),
    );
    let records = history_json(&env, "load");
    let lost: Vec<&serde_json::Value> = records.iter().filter(|r| r["run_id"] == claimed).collect();
    assert_eq!(lost.len(), 1, "{records:#?}");
    assert!(asked_again(lost[0]), "{records:#?}");
    assert_eq!(steps(&env).iter().filter(|s| s.job == "load").count(), 1);

    // One a supervisor had taken over was under way: lost, not run again.
    let (under_way, upstream2) = (
        "01a23900-0000-7000-8000-000000000002",
        "01a23900-0000-7000-8000-0000000000bb",
    );
    let (_, granted) = http(port, "POST", "/v3/lease/grant", Some(r#"{"TTL": 2}"#)).unwrap();
    let lease: serde_json::Value = serde_json::from_str(&granted).unwrap();
    let mut marker = marker;
    marker["run_id"] = under_way.into();
    marker["upstream"]["run_id"] = upstream2.into();
    marker["supervisor_pid"] = 4_000_000.into();
    let body = format!(
        r#"{{"key":"{}","value":"{}","lease":"{}"}}"#,
        base64_encode(format!("/again/active/load/{under_way}").as_bytes()),
        base64_encode(marker.to_string().as_bytes()),
        lease["ID"].as_str().unwrap()
    );
    assert_eq!(
        http(port, "POST", "/v3/kv/put", Some(&body)).unwrap().0,
        200
    );
    wait_until(PATIENCE, "the run under way recorded lost", || {
        history_json(&env, "load")
            .iter()
            .any(|r| r["run_id"] == under_way && r["outcome"] == "lost")
    });
    // A request for it would have been written with that record: give
    // its run the time the first one took to show, and more.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !started_after(&env, "load").contains(upstream2),
        "a run under way was run again"
    );
    let of: Vec<serde_json::Value> = history_json(&env, "load")
        .into_iter()
        .filter(|r| r["upstream"]["run_id"] == upstream2)
        .collect();
    assert_eq!(of.len(), 1, "{of:#?}");
    assert!(!asked_again(&of[0]), "{of:#?}");
}

/// README "Jobs after jobs": a disabled job's and a paused job's `after`
/// runs are recorded as skipped, naming the upstream run, and do not run
/// (a pause holds them back even where manual runs still work).
#[test]
fn a_disabled_or_paused_dependent_records_its_after_runs_skipped() {
    let env = Env::new().config(&format!(
        "[jobs.extract]\nschedule = \"@every 1s\"\nshell = '{}'\n\n\
         [jobs.off]\nafter = [\"extract\"]\nenabled = false\nshell = '{}'\n\n\
         [jobs.held]\nafter = [\"extract\"]\nshell = '{}'\n",
        step_line("ok"),
        step_line("ok"),
        step_line("ok")
    ));
    env.cmd(&["pause", "held"]).run().success();
    let _run = env.spawn_run("a");
    let skipped = |job: &str, why: &str| {
        history_json(&env, job)
            .iter()
            .filter(|r| {
                r["outcome"] == "skipped"
                    && r["trigger"] == "after"
                    && r["upstream"]["job"] == "extract"
                    && r["reason"].as_str().is_some_and(|w| w.contains(why))
            })
            .count()
    };
    wait_until(PATIENCE, "after-runs of both skipped", || {
        skipped("off", "disabled: not run after extract") >= 2 && skipped("held", "paused") >= 2
    });
    let ran: Vec<Step> = steps(&env)
        .into_iter()
        .filter(|s| s.job != "extract")
        .collect();
    assert!(ran.is_empty(), "{ran:?}");
}
