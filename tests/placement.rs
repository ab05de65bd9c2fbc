//! Runs spread over the replicas (`run_on`, README "Running as
//! replicas"): three real `bgsched run` replicas on a real etcd, the jobs
//! writing a ledger of where and for which tick they ran, and the
//! assertions made on that ledger and on the recorded history.

mod common;

use common::etcd::{Etcd, EtcdCluster};
use common::*;
use rustix::process::Signal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// One replica set at a time: each test is three schedulers and etcd.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn cluster(etcd: &Etcd, rest: &str) -> Env {
    Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/placement\"\nlease_ttl = \"2s\"\n\n{rest}",
        etcd.endpoint()
    ))
}

/// A job whose run writes `start` and `end` ledger lines around `sleep`.
fn job(name: &str, keys: &str, sleep: &str) -> String {
    format!(
        "[jobs.{name}]\nschedule = \"@every 1s\"\n{keys}\nshell = '{}; sleep {sleep}; {}'\n",
        ledger_line("start", "ledger"),
        ledger_line("end", "ledger")
    )
}

#[derive(Debug, Clone)]
struct Line {
    event: String,
    tick: String,
    at: f64,
    run_id: String,
    trigger: String,
    instance: String,
    job: String,
}

/// The ledger, each line tagged with its job (the run id's records say
/// which; the ledger line names the run).
fn ledger(env: &Env, file: &str) -> Vec<Line> {
    env.lines(file)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 7, "malformed ledger line {l:?}");
            Line {
                event: f[0].into(),
                tick: f[1].into(),
                at: f[2].parse().unwrap(),
                run_id: f[3].into(),
                trigger: f[4].into(),
                instance: f[5].into(),
                job: f[6].into(),
            }
        })
        .collect()
}

/// [`ledger_line`] with the job's name as a last field.
fn ledger_line(event: &str, file: &str) -> String {
    format!("echo \"{event} $BGSCHED_SCHEDULED_AT $(date +%s.%N) $BGSCHED_RUN_ID $BGSCHED_TRIGGER $BGSCHED_INSTANCE $BGSCHED_JOB\" >> {{dir}}/{file}")
}

/// [`wait_until`], saying on a timeout what the replicas logged and the
/// ledger holds.
fn wait_or_tell(env: &Env, within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > within {
            let logs: Vec<String> = ["a", "b", "c"]
                .iter()
                .map(|i| {
                    let text =
                        std::fs::read_to_string(env.path(&format!("{i}.log"))).unwrap_or_default();
                    let tail: Vec<&str> = text
                        .lines()
                        .rev()
                        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
                        .take(40)
                        .collect();
                    format!(
                        "--- {i}.log (last lines, newest first)\n{}",
                        tail.join("\n")
                    )
                })
                .collect();
            let jobs: BTreeSet<String> = ledger(env, "ledger").into_iter().map(|l| l.job).collect();
            let records: Vec<String> = jobs
                .iter()
                .flat_map(|j| history(env, j))
                .map(|r| r.to_string())
                .collect();
            panic!(
                "timed out after {within:?} waiting for {what}\nledger:\n{}\nrecords:\n{}\n{}",
                env.lines("ledger").join("\n"),
                records.join("\n"),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leader_of(env: &Env) -> Option<String> {
    env.list_json()["leader"]["instance"]
        .as_str()
        .map(str::to_string)
}

/// `a` started first and leading, then `b` (with `b_args`) among the members.
fn leader_a_then_member_b(env: &Env, b_args: &[&str]) -> (Scheduler, Scheduler) {
    let a = env.spawn_run_with("a", &["--http", "127.0.0.1:0"]);
    wait_until(PATIENCE, "a leading", || {
        leader_of(env).as_deref() == Some("a")
    });
    let b = env.spawn_run_with("b", b_args);
    sees_members(a.http_port(), &["b"]);
    (a, b)
}

/// `bgsched history --json` of `job`, all entries.
fn history(env: &Env, job: &str) -> Vec<serde_json::Value> {
    let out = env
        .cmd(&["history", job, "--json", "-n", "1000"])
        .run()
        .success();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("history --json: {e}: {}", out.stdout))
}

/// Every process under `pid` (the scheduler, its supervisors, their jobs).
fn tree_of(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some(parent) = parent_of(p) {
            children.entry(parent).or_default().push(p);
        }
    }
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children.get(&all[i]).cloned().unwrap_or_default());
        i += 1;
    }
    all
}

/// The machine of `replica` is gone: SIGSTOP its whole tree (so nothing
/// in it reacts), then SIGKILL every process of it.
fn kill_machine(replica: &mut Scheduler) {
    let tree = tree_of(replica.pid());
    for sig in [Signal::STOP, Signal::KILL] {
        for p in &tree {
            if let Some(pid) = rustix::process::Pid::from_raw(*p) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    }
    replica.kill9();
}

/// Per job, the ticks with a start in the ledger, checking none twice.
fn ticks_started(lines: &[Line]) -> BTreeMap<String, BTreeSet<String>> {
    let mut started: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in lines
        .iter()
        .filter(|l| l.event == "start" && l.trigger == "schedule")
    {
        assert!(
            started
                .entry(l.job.clone())
                .or_default()
                .insert(l.tick.clone()),
            "tick {} of {} fired twice: {:#?}",
            l.tick,
            l.job,
            lines
                .iter()
                .filter(|x| x.job == l.job && x.tick == l.tick)
                .collect::<Vec<_>>()
        );
    }
    started
}

/// No two runs of one job overlapped (each job is `overlap = "skip"`). A
/// run without an `end` line (killed) counts as running until its record
/// says it ended.
fn assert_no_overlap(env: &Env, lines: &[Line]) {
    let mut spans: HashMap<(&str, &str), (f64, f64)> = HashMap::new();
    for l in lines {
        let span = spans
            .entry((l.job.as_str(), l.run_id.as_str()))
            .or_insert((l.at, f64::MAX));
        if l.event == "end" {
            span.1 = l.at;
        }
    }
    let mut by_job: BTreeMap<&str, Vec<(f64, f64, &str)>> = BTreeMap::new();
    for ((job, id), (s, e)) in spans {
        by_job.entry(job).or_default().push((s, e, id));
    }
    for (job, mut spans) in by_job {
        let records = history(env, job);
        let record = |id: &str| records.iter().find(|r| r["run_id"] == id).cloned();
        for span in spans.iter_mut().filter(|s| s.1 == f64::MAX) {
            if let Some(end) = record(span.2)
                .and_then(|r| r["ended_at"].as_str().map(str::to_string))
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            {
                span.1 = end.timestamp_nanos_opt().unwrap_or(i64::MAX) as f64 / 1e9;
            }
        }
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        for w in spans.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "runs {} and {} of {job} overlapped: {:#?}\nrecords: {:#?} {:#?}",
                w[0].2,
                w[1].2,
                lines
                    .iter()
                    .filter(|l| l.run_id == w[0].2 || l.run_id == w[1].2)
                    .collect::<Vec<_>>(),
                record(w[0].2),
                record(w[1].2)
            );
        }
    }
}

#[test]
fn thirty_jobs_on_any_member_spread_over_three_replicas_once_per_tick_without_overlap() {
    let _serial = serial();
    let etcd = Etcd::start();
    let jobs: String = (0..30)
        .map(|i| job(&format!("j{i:02}"), "run_on = \"any\"", "0.5"))
        .collect();
    let env = cluster(&etcd, &jobs);
    let replicas: Vec<Scheduler> = ["a", "b", "c"].iter().map(|i| env.spawn_run(i)).collect();
    wait_until(PATIENCE, "a leader", || leader_of(&env).is_some());
    let began = now_secs();
    wait_until(Duration::from_secs(120), "60 s of runs", || {
        now_secs() - began > 60.0
    });
    // Stopped gracefully, so the runs under way end and are recorded.
    for r in &replicas {
        r.signal(Signal::TERM);
    }
    for mut r in replicas {
        assert_eq!(
            r.wait_exit(Duration::from_secs(30)),
            Some(0),
            "{}",
            r.log_text()
        );
    }
    let lines = ledger(&env, "ledger");
    let started = ticks_started(&lines);
    assert_no_overlap(&env, &lines);
    let starts: Vec<&Line> = lines.iter().filter(|l| l.event == "start").collect();
    let total = starts.len();
    assert!(total >= 30 * 40, "only {total} runs in 60 s");
    for member in ["a", "b", "c"] {
        let here = starts.iter().filter(|l| l.instance == member).count();
        assert!(
            here * 5 >= total,
            "member {member} executed {here} of {total} runs (under 20 %)"
        );
    }
    // Every tick between a job's first and last run is accounted for: a
    // run, or an entry saying why not.
    for (job, ticks) in &started {
        let recorded: BTreeSet<String> = history(&env, job)
            .iter()
            .filter_map(|r| r["tick"].as_str().map(|t| t.replace("+00:00", "Z")))
            .collect();
        let secs = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp();
        let first = secs(ticks.iter().next().unwrap());
        let last = secs(ticks.iter().next_back().unwrap());
        let norm: BTreeSet<i64> = ticks.iter().map(|t| secs(t)).collect();
        let rec: BTreeSet<i64> = recorded.iter().map(|t| secs(t)).collect();
        for t in first..=last {
            assert!(
                norm.contains(&t) || rec.contains(&t),
                "tick {t} of {job} neither ran nor was recorded"
            );
        }
        // Each run the ledger saw has its record, naming where it ran.
        let records = history(&env, job);
        for l in lines.iter().filter(|l| l.job == *job && l.event == "start") {
            let r = records
                .iter()
                .find(|r| r["run_id"] == l.run_id.as_str())
                .unwrap_or_else(|| panic!("run {} of {job} has no record", l.run_id));
            assert_eq!(r["instance"], l.instance.as_str(), "{r:#}");
            assert_eq!(r["outcome"], "success", "{r:#}");
        }
    }
}

#[test]
fn a_member_lost_with_its_machine_has_its_runs_recorded_lost_and_retried_on_another() {
    let _serial = serial();
    let etcd = Etcd::start();
    let jobs: String = (0..6)
        .map(|i| {
            job(
                &format!("w{i}"),
                "run_on = \"any\"\nretries = 1\nretry_backoff = \"100ms\"\nschedule = \"@every 1h\"",
                "4",
            )
            .replacen("schedule = \"@every 1s\"\n", "", 1)
        })
        .collect();
    let env = cluster(&etcd, &jobs);
    let mut replicas: HashMap<String, Scheduler> = ["a", "b", "c"]
        .iter()
        .map(|i| {
            let run = env.spawn_run_with(i, &["--http", "127.0.0.1:0"]);
            (i.to_string(), run)
        })
        .collect();
    wait_until(PATIENCE, "a leader", || leader_of(&env).is_some());
    let leader = leader_of(&env).unwrap();
    // Every member live in the leader's view before the runs are asked for.
    sees_members(replicas[&leader].http_port(), &["a", "b", "c"]);
    for i in 0..6 {
        env.cmd(&["trigger", &format!("w{i}"), "--detach"])
            .run()
            .success();
    }
    let victim = ["a", "b", "c"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap()
        .to_string();
    wait_until(
        PATIENCE,
        "a run started on a member other than the leader",
        || {
            ledger(&env, "ledger")
                .iter()
                .any(|l| l.event == "start" && l.instance == victim)
        },
    );
    let mut gone = replicas.remove(&victim).unwrap();
    kill_machine(&mut gone);
    let on_victim: Vec<Line> = ledger(&env, "ledger")
        .into_iter()
        .filter(|l| l.event == "start" && l.instance == victim)
        .collect();
    for lost in &on_victim {
        wait_or_tell(
            &env,
            Duration::from_secs(40),
            "the lost run retried and ended",
            || {
                let records = history(&env, &lost.job);
                let was_lost = records
                    .iter()
                    .any(|r| r["run_id"] == lost.run_id.as_str() && r["outcome"] == "lost");
                let retried = records.iter().any(|r| {
                    r["outcome"] == "success"
                        && r["instance"] != victim.as_str()
                        && r["attempt"] == 2
                        && r["run_id"] != lost.run_id.as_str()
                });
                was_lost && retried
            },
        );
    }
    // Each lost run was retried exactly once, and not on the lost member.
    for lost in &on_victim {
        let retries: Vec<Line> = ledger(&env, "ledger")
            .into_iter()
            .filter(|l| l.job == lost.job && l.event == "start" && l.run_id != lost.run_id)
            .collect();
        assert_eq!(retries.len(), 1, "{retries:#?}");
        assert_ne!(retries[0].instance, victim);
        // The retry was asked for with the `lost` record, which names it.
        let records = history(&env, &lost.job);
        let lost_record = records
            .iter()
            .find(|r| r["run_id"] == lost.run_id.as_str())
            .unwrap();
        assert_eq!(
            lost_record["reason"],
            format!(
                "its running marker expired: the supervisor died or lost etcd before recording the run; its retry is run {}",
                retries[0].run_id
            ),
            "{lost_record}"
        );
    }
}

#[test]
fn a_leader_killed_leaves_the_members_runs_running_and_recorded() {
    let _serial = serial();
    let etcd = Etcd::start();
    let jobs: String = (0..6)
        .map(|i| job(&format!("k{i}"), "run_on = \"any\"", "3"))
        .collect();
    let env = cluster(&etcd, &jobs);
    let mut replicas: HashMap<String, Scheduler> = ["a", "b", "c"]
        .iter()
        .map(|i| (i.to_string(), env.spawn_run(i)))
        .collect();
    wait_until(PATIENCE, "a leader", || leader_of(&env).is_some());
    let leader = leader_of(&env).unwrap();
    wait_until(PATIENCE, "runs on both other members", || {
        let l = ledger(&env, "ledger");
        ["a", "b", "c"]
            .iter()
            .filter(|m| **m != leader)
            .all(|m| l.iter().any(|x| x.event == "start" && x.instance == *m))
    });
    replicas.get_mut(&leader).unwrap().kill9();
    let at_kill = now_secs();
    let running: Vec<Line> = {
        let l = ledger(&env, "ledger");
        l.iter()
            .filter(|s| {
                s.event == "start"
                    && s.instance != leader
                    && !l.iter().any(|e| e.event == "end" && e.run_id == s.run_id)
            })
            .cloned()
            .collect()
    };
    assert!(!running.is_empty(), "no member run under way at the kill");
    for r in &running {
        wait_until(Duration::from_secs(20), "the member's run recorded", || {
            history(&env, &r.job)
                .iter()
                .any(|x| x["run_id"] == r.run_id.as_str() && x["outcome"] == "success")
        });
    }
    let ended: Vec<Line> = ledger(&env, "ledger")
        .into_iter()
        .filter(|l| l.event == "end" && running.iter().any(|r| r.run_id == l.run_id))
        .collect();
    assert_eq!(
        ended.len(),
        running.len(),
        "a member's run did not run to its end"
    );
    wait_until(PATIENCE, "a new leader placing runs", || {
        ledger(&env, "ledger")
            .iter()
            .any(|l| l.event == "start" && l.at > at_kill + 1.0)
    });
    let lines = ledger(&env, "ledger");
    ticks_started(&lines);
    assert_no_overlap(&env, &lines);
}

#[test]
fn labels_place_runs_only_on_matching_members_and_a_job_no_member_matches_is_recorded_missed() {
    let _serial = serial();
    let etcd = Etcd::start();
    let jobs = format!(
        "{}{}{}",
        job("zone_a", "run_on = { labels = { zone = \"a\" } }", "0.1"),
        job("zone_b", "run_on = { labels = { zone = \"b\" } }", "0.1"),
        job("zone_z", "run_on = { labels = { zone = \"z\" } }", "0.1"),
    );
    let env = cluster(&etcd, &jobs);
    let _a = env.spawn_run_with("a", &["--label", "zone=a"]);
    let _b = env.spawn_run_with("b", &["--label", "zone=b"]);
    let _c = env.spawn_run_with("c", &["--label", "zone=b"]);
    wait_until(PATIENCE, "a leader", || leader_of(&env).is_some());
    wait_until(PATIENCE, "runs of zone_b on both b members", || {
        let l = ledger(&env, "ledger");
        ["b", "c"]
            .iter()
            .all(|m| l.iter().any(|x| x.job == "zone_b" && x.instance == *m))
    });
    wait_until(PATIENCE, "a recorded miss of zone_z", || {
        history(&env, "zone_z").iter().any(|r| {
            r["outcome"] == "missed"
                && r["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("no live member matches labels zone=z"))
        })
    });
    // `list` shows each member's labels and where each job last ran.
    let out = env.cmd(&["list"]).run().success();
    assert!(out.stdout.contains("labels zone=a"), "{}", out.stdout);
    let row = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("zone_a "))
        .unwrap_or_else(|| panic!("no zone_a row: {}", out.stdout));
    assert!(row.contains(" on a"), "{row}");
    // A job no member can take says so in its row, not only "never".
    let row = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("zone_z "))
        .unwrap_or_else(|| panic!("no zone_z row: {}", out.stdout));
    assert!(row.contains("never") && row.contains(" missed"), "{row}");
    let lines = ledger(&env, "ledger");
    assert!(lines.iter().any(|l| l.job == "zone_a"), "zone_a never ran");
    for l in &lines {
        match l.job.as_str() {
            "zone_a" => assert_eq!(l.instance, "a", "{l:?}"),
            "zone_b" => assert_ne!(l.instance, "a", "{l:?}"),
            other => panic!("{other} ran: {l:?}"),
        }
    }
    ticks_started(&lines);
}

#[test]
fn a_member_stopped_by_sigterm_finishes_its_runs_and_takes_no_new_ones() {
    let _serial = serial();
    let etcd = Etcd::start();
    let jobs: String = (0..6)
        .map(|i| job(&format!("s{i}"), "run_on = \"any\"", "2"))
        .collect();
    let env = cluster(
        &etcd,
        &format!("[scheduler]\nshutdown_grace = \"30s\"\n\n{jobs}"),
    );
    let mut replicas: HashMap<String, Scheduler> = ["a", "b", "c"]
        .iter()
        .map(|i| (i.to_string(), env.spawn_run(i)))
        .collect();
    wait_until(PATIENCE, "a leader", || leader_of(&env).is_some());
    let leader = leader_of(&env).unwrap();
    let leaving = ["a", "b", "c"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap()
        .to_string();
    wait_until(PATIENCE, "a run on the member that will leave", || {
        ledger(&env, "ledger")
            .iter()
            .any(|l| l.event == "start" && l.instance == leaving)
    });
    let member = replicas.get_mut(&leaving).unwrap();
    member.signal(Signal::TERM);
    let at_term = now_secs();
    assert_eq!(member.wait_exit(Duration::from_secs(30)), Some(0));
    let lines = ledger(&env, "ledger");
    let starts_there: Vec<&Line> = lines
        .iter()
        .filter(|l| l.event == "start" && l.instance == leaving)
        .collect();
    for s in &starts_there {
        assert!(
            lines
                .iter()
                .any(|e| e.event == "end" && e.run_id == s.run_id),
            "run {} on the leaving member did not finish",
            s.run_id
        );
        // Placed at most a moment after the SIGTERM (the leader hears of
        // the leave through etcd).
        assert!(
            s.at < at_term + 0.5,
            "placed on {leaving} after it left: {s:?}"
        );
        let rec = history(&env, &s.job);
        assert!(
            rec.iter()
                .any(|r| r["run_id"] == s.run_id.as_str() && r["outcome"] == "success"),
            "{rec:#?}"
        );
    }
    // The others go on with all the runs.
    let later = now_secs();
    wait_until(PATIENCE, "runs after the member left", || {
        ledger(&env, "ledger")
            .iter()
            .filter(|l| l.event == "start" && l.at > later)
            .count()
            >= 6
    });
    for l in ledger(&env, "ledger").iter().filter(|l| l.at > later) {
        assert_ne!(l.instance, leaving, "{l:?}");
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The `/metrics` text of a replica.
fn metrics(port: u16) -> String {
    common::etcd::http(port, "GET", "/metrics", None)
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Wait until the replica serving `port` sees each of `members` live: a
/// leader places only on members its watch has seen, a beat after they
/// are listed in etcd.
fn sees_members(port: u16, members: &[&str]) {
    wait_until(PATIENCE, "the leader's view holds every member", || {
        let text = metrics(port);
        members
            .iter()
            .all(|m| text.contains(&format!("bgsched_member_active_runs{{member=\"{m}\"}}")))
    });
}

#[test]
fn a_manual_run_goes_where_trigger_on_or_label_says_and_metrics_count_per_member() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster(
        &etcd,
        &job("m", "schedule = \"@every 1h\"", "0.1").replacen("schedule = \"@every 1s\"\n", "", 1),
    );
    let a = env.spawn_run_with("a", &["--label", "zone=a", "--http", "127.0.0.1:0"]);
    let b = env.spawn_run_with("b", &["--label", "zone=b", "--http", "127.0.0.1:0"]);
    let c = env.spawn_run_with("c", &["--http", "127.0.0.1:0"]);
    wait_until(PATIENCE, "a leader", || leader_of(&env).is_some());
    let leader = leader_of(&env).unwrap();
    // Every member live in the leader's view first.
    let leader_port = [&a, &b, &c]
        .into_iter()
        .find(|r| r.instance == leader)
        .unwrap()
        .http_port();
    sees_members(leader_port, &["a", "b", "c"]);
    let ran_on = |args: &[&str]| -> String {
        let mut all = vec!["trigger", "m"];
        all.extend_from_slice(args);
        let out = env.cmd(&all).run().success();
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(" on instance "))
            .unwrap_or_else(|| panic!("no summary line: {}", out.stderr))
            .to_string();
        line.rsplit(' ').next().unwrap_or_default().to_string()
    };
    for member in ["a", "b", "c"] {
        assert_eq!(ran_on(&["--on", member]), member);
    }
    assert_eq!(ran_on(&["--label", "zone=b"]), "b");
    assert_eq!(ran_on(&["--label", "zone=a"]), "a");
    // Nobody by that name: recorded, and said, rather than run elsewhere.
    let out = env.cmd(&["trigger", "m", "--on", "nobody"]).run().code(69);
    env.cmd(&["trigger", "m", "--on", ""])
        .run()
        .code(2)
        .stderr_has("--on <MEMBER>");
    assert!(
        out.stderr
            .contains("no live member matches the name nobody"),
        "{}",
        out.stderr
    );
    let rec = history(&env, "m");
    assert!(
        rec.iter().any(|r| r["outcome"] == "missed"
            && r["reason"]
                .as_str()
                .is_some_and(|w| w.contains("the name nobody"))),
        "{rec:#?}"
    );
    // The leader counts what it placed on each other member; every
    // replica shows the members' active runs.
    let text = metrics(leader_port);
    for member in ["a", "b", "c"].into_iter().filter(|m| *m != leader) {
        let series = format!("bgsched_placements_total{{member=\"{member}\"}}");
        let n: f64 = text
            .lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(n >= 1.0, "{series} = {n}");
    }
    assert!(
        text.contains("bgsched_member_active_runs{member=\"a\"}"),
        "{text}"
    );
    // Standalone there is no member to choose.
    let alone = Env::new().config(&job("m", "", "0"));
    alone
        .cmd(&["trigger", "m", "--on", "a"])
        .run()
        .code(2)
        .stderr_has("--on and --label choose a member of a cluster");
}

#[test]
fn a_queued_run_whose_member_is_lost_before_its_turn_is_recorded_lost() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster(
        &etcd,
        &job(
            "q",
            "schedule = \"@every 1h\"\noverlap = \"queue\"\nrun_on = { labels = { role = \"w\" } }",
            "8",
        )
        .replacen("schedule = \"@every 1s\"\n", "", 1),
    );
    // The leader has no label: both runs go to the two workers.
    let a = env.spawn_run_with("a", &["--http", "127.0.0.1:0"]);
    wait_until(PATIENCE, "a leading", || {
        leader_of(&env).as_deref() == Some("a")
    });
    let mut workers: HashMap<String, Scheduler> = ["b", "c"]
        .iter()
        .map(|i| (i.to_string(), env.spawn_run_with(i, &["--label", "role=w"])))
        .collect();
    sees_members(a.http_port(), &["b", "c"]);
    let first = env.trigger_detached("q");
    wait_until(PATIENCE, "the first run started", || {
        ledger(&env, "ledger").iter().any(|l| l.run_id == first)
    });
    let runs_first = ledger(&env, "ledger")
        .into_iter()
        .find(|l| l.run_id == first)
        .unwrap()
        .instance;
    let second = env.trigger_detached("q");
    let waiting_on = if runs_first == "b" { "c" } else { "b" };
    // The queued run waits on the other worker; its machine goes.
    wait_until(
        PATIENCE,
        "the second run queued on the other worker",
        || {
            common::etcd::kv_get(&etcd.endpoint(), "/placement/queued/q")
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
                .is_some_and(|m| m["run_id"] == second.as_str() && m["instance"] == waiting_on)
        },
    );
    kill_machine(workers.get_mut(waiting_on).unwrap());
    wait_or_tell(
        &env,
        Duration::from_secs(30),
        "the queued run recorded lost",
        || {
            history(&env, "q")
                .iter()
                .any(|r| r["run_id"] == second.as_str() && r["outcome"] == "lost")
        },
    );
    assert!(
        !ledger(&env, "ledger").iter().any(|l| l.run_id == second),
        "the queued run started"
    );
}

#[test]
fn a_member_restarted_under_its_instance_id_never_starts_a_run_placed_on_its_previous_process() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster(
        &etcd,
        &job(
            "r",
            "schedule = \"@every 1h\"\nrun_on = { labels = { role = \"w\" } }",
            "4",
        )
        .replacen("schedule = \"@every 1s\"\n", "", 1),
    );
    let (_a, mut b) = leader_a_then_member_b(&env, &["--label", "role=w"]);
    let id = env.trigger_detached("r");
    wait_until(PATIENCE, "the run started on b", || {
        ledger(&env, "ledger")
            .iter()
            .any(|l| l.run_id == id && l.instance == "b")
    });
    // The scheduler alone dies; its supervisor goes on. The same instance
    // id comes back at once and lists the assignment, still there.
    b.kill9();
    let _b = env.spawn_run_with("b", &["--label", "role=w"]);
    wait_or_tell(&env, Duration::from_secs(30), "the run recorded", || {
        history(&env, "r")
            .iter()
            .any(|r| r["run_id"] == id.as_str() && r["outcome"] == "success")
    });
    let starts = ledger(&env, "ledger")
        .into_iter()
        .filter(|l| l.run_id == id && l.event == "start")
        .count();
    assert_eq!(starts, 1, "the run started {starts} times");
}

#[test]
fn a_members_own_config_and_max_runs_decide_what_it_runs_and_services_stay_on_the_leader() {
    let _serial = serial();
    let etcd = Etcd::start();
    let on_b = "run_on = { labels = { role = \"b\" } }";
    let service = "[jobs.svc]\nschedule = \"@continuous\"\nrun_on = \"any\"\n\
                   shell = 'echo $BGSCHED_INSTANCE >> {dir}/svc; sleep 1'\n";
    let both = format!(
        "{service}{}{}",
        job("slow1", &format!("{on_b}\noverlap = \"queue\""), "2"),
        job("slow2", on_b, "2"),
    );
    // The leader's config has the job `lacking`; the members' has not.
    let leader_env = cluster(
        &etcd,
        &format!(
            "{both}{}",
            job("lacking", "run_on = { labels = { role = \"c\" } }", "0")
        ),
    );
    let members_env = cluster(
        &etcd,
        &format!("[member]\nlabels = {{ role = \"b\" }}\nmax_runs = 1\n\n{both}"),
    );
    let _a = leader_env.spawn_run("a");
    wait_until(PATIENCE, "a leading", || {
        leader_of(&leader_env).as_deref() == Some("a")
    });
    let _b = members_env.spawn_run("b");
    let _c = members_env.spawn_run_with("c", &["--label", "role=c"]);

    let reason_of = |job: &str, outcome: &str, words: &str| {
        history(&leader_env, job).iter().any(|r| {
            r["outcome"] == outcome && r["reason"].as_str().is_some_and(|w| w.contains(words))
        })
    };
    wait_until(PATIENCE, "a run of `lacking` refused by member c", || {
        reason_of(
            "lacking",
            "start_failed",
            "member c has no job named \"lacking\" in its config",
        )
    });
    // A queue job does not wait for room on a full member: its tick is missed.
    wait_until(PATIENCE, "slow1 and slow2 missed for b being full", || {
        ["slow1", "slow2"].iter().all(|job| {
            reason_of(
                job,
                "missed",
                "all 1 member(s) matching labels role=b are full (max_runs)",
            )
        })
    });
    wait_until(PATIENCE, "four runs ended on b", || {
        ledger(&members_env, "ledger")
            .iter()
            .filter(|l| l.event == "end")
            .count()
            >= 4
    });
    let out = leader_env.cmd(&["list"]).run().success();
    assert!(
        out.stderr.contains("replicas run different configs")
            || out.stdout.contains("replicas run different configs"),
        "{out:?}"
    );

    // max_runs = 1: the runs on b, of both jobs, one after another.
    let lines = ledger(&members_env, "ledger");
    let mut spans: BTreeMap<&str, (f64, f64, &str)> = BTreeMap::new();
    for l in &lines {
        assert_eq!(l.instance, "b", "only b has role=b: {l:?}");
        let span = spans
            .entry(l.run_id.as_str())
            .or_insert((l.at, f64::MAX, l.job.as_str()));
        if l.event == "end" {
            span.1 = l.at;
        }
    }
    let mut spans: Vec<_> = spans.into_iter().collect();
    spans.sort_by(|x, y| x.1 .0.total_cmp(&y.1 .0));
    for w in spans.windows(2) {
        assert!(
            w[1].1 .0 >= w[0].1 .1,
            "two runs on b at once, over its max_runs = 1: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    // Neither a role=b job nor `lacking` ran on the leader.
    assert_eq!(leader_env.lines("ledger"), Vec::<String>::new());

    // The service asked to run on "any" member runs on the leader alone.
    wait_until(PATIENCE, "the service started twice", || {
        leader_env.lines("svc").len() >= 2
    });
    assert!(
        leader_env.lines("svc").iter().all(|i| i == "a"),
        "{:?}",
        leader_env.lines("svc")
    );
    assert_eq!(members_env.lines("svc"), Vec::<String>::new());
}

#[test]
fn a_member_cut_off_from_etcd_kills_its_placed_run_and_the_leader_records_it_lost() {
    let _serial = serial();
    let mut etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints();
    let config = |endpoints: &[String], member: &str| {
        let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        format!(
            "[cluster]\netcd = [{}]\nprefix = \"/placement\"\nlease_ttl = \"2s\"\n\n{member}\
             [jobs.far]\nschedule = \"@yearly\"\nrun_on = {{ labels = {{ role = \"b\" }} }}\n\
             shell = 'echo $$ > {{dir}}/far.pid; {}; exec sleep 60'\n",
            list.join(", "),
            ledger_line("start", "ledger")
        )
    };
    // The leader reaches etcd through members 1 and 2; b only through 0,
    // whose death (quorum kept) cuts b off.
    let leader_env = Env::new().config(&config(&endpoints[1..], ""));
    let b_env = Env::new().config(&config(
        &endpoints[..1],
        "[member]\nlabels = { role = \"b\" }\n\n",
    ));
    let _a = leader_env.spawn_run("a");
    wait_until(PATIENCE, "a leading", || {
        leader_of(&leader_env).as_deref() == Some("a")
    });
    let _b = b_env.spawn_run("b");
    wait_until(PATIENCE, "b among the members", || {
        leader_env.list_json()["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["instance"] == "b"))
    });
    let run_id = leader_env.trigger_detached("far");
    wait_until(PATIENCE, "the run started on b", || {
        ledger(&b_env, "ledger")
            .iter()
            .any(|l| l.run_id == run_id && l.instance == "b")
    });
    let pid: i32 = b_env.lines("far.pid")[0].trim().parse().unwrap();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    assert!(alive(pid), "the job's process before the cut");

    etcd.kill_member(0);
    let cut = std::time::Instant::now();
    // The fencing window is 2/3 of lease_ttl (1.3 s here); generous for a
    // loaded machine.
    wait_until(
        Duration::from_secs(10),
        "the cut-off member's job killed",
        || !alive(pid),
    );
    let killed_after = cut.elapsed();
    wait_until(PATIENCE, "the run recorded lost by the leader", || {
        history(&leader_env, "far")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "lost")
    });
    let rec = history(&leader_env, "far")
        .into_iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap();
    assert_eq!(rec["instance"], "b", "{rec}");
    assert!(
        killed_after < Duration::from_secs(6),
        "killed {killed_after:?} after the cut"
    );
}

/// etcd refuses the leader the lost record for a while (here: its user's
/// right to the history keys is taken away, as a misconfigured role or an
/// etcd with no quorum would): the record is written once etcd takes it
/// again, never dropped.
#[test]
fn a_lost_run_that_etcd_will_not_take_the_record_of_for_a_while_is_recorded_once_it_does() {
    let _serial = serial();
    const USER: &str = "sched";
    const PW: &str = "pw-for-the-lost-run-test";
    let etcd = Etcd::start_with_auth(USER, PW);
    let as_root = |path: &str, body: String| {
        etcd.call_as("root", PW, path, &body);
    };
    let key = |k: &str| common::etcd::base64_encode(k.as_bytes());
    let grant = |role: &str, from: &str, to: &str| {
        as_root(
            "/v3/auth/role/grant",
            format!(
                r#"{{"name":"{role}","perm":{{"permType":"READWRITE","key":"{}","range_end":"{}"}}}}"#,
                key(from),
                key(to)
            ),
        )
    };
    // Everything but the history keys, and the history keys, as two roles.
    as_root("/v3/auth/role/add", r#"{"name":"rest"}"#.into());
    grant("rest", "\0", "/lost/history/");
    grant("rest", "/lost/history0", "\0");
    as_root("/v3/auth/role/add", r#"{"name":"history"}"#.into());
    grant("history", "/lost/history/", "/lost/history0");
    let user_role = |what: &str, role: &str| {
        let body = match what {
            "grant" => format!(r#"{{"user":"{USER}","role":"{role}"}}"#),
            _ => format!(r#"{{"name":"{USER}","role":"{role}"}}"#),
        };
        as_root(&format!("/v3/auth/user/{what}"), body);
    };
    user_role("grant", "rest");
    user_role("grant", "history");
    user_role("revoke", "readwrite");

    let env =
        Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/lost\"\nlease_ttl = \"2s\"\nuser = \"{USER}\"\n\
         password_file = \"{{dir}}/pw\"\n\n{}",
        etcd.endpoint(),
        job("far", "run_on = { labels = { role = \"b\" } }\nschedule = \"@yearly\"", "600")
            .replacen("schedule = \"@every 1s\"\n", "", 1)
    ));
    env.write("pw", PW);
    let (a, mut b) = leader_a_then_member_b(&env, &["--label", "role=b"]);
    let run_id = env.trigger_detached("far");
    wait_until(PATIENCE, "the run started on b", || {
        ledger(&env, "ledger").iter().any(|l| l.run_id == run_id)
    });

    user_role("revoke", "history");
    kill_machine(&mut b);
    wait_until(
        PATIENCE,
        "the leader failing to record the lost run",
        || a.log_text().contains("lost runs cannot be recorded yet"),
    );
    user_role("grant", "history");
    wait_until(PATIENCE, "the lost run recorded", || {
        history(&env, "far")
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["outcome"] == "lost")
    });
    let records: Vec<_> = history(&env, "far")
        .into_iter()
        .filter(|r| r["run_id"] == run_id.as_str())
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
}
