//! Cluster mode against a real etcd and real `bgsched run` replicas. The
//! jobs write their own ledger (tick, instance, fencing token, start and end
//! times), and the assertions are made on that ledger, not on bgsched's
//! view of itself.

mod common;

use common::etcd::Etcd;
use common::*;
use rustix::process::Signal;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Cluster tests start etcd and three replicas each; run them one at a
/// time so a 2-core machine is not asked for twelve busy processes at once.
static SERIAL: Mutex<()> = Mutex::new(());

const TTL_SECS: u64 = 2;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `event tick unix-time run-id trigger instance token` per line. The
/// clock is read with SIGTERM ignored: a run replaced right as it starts
/// gets SIGTERM in its whole group, `date` included, and must still write
/// a whole line.
fn ledger_cmd(event: &str) -> String {
    format!(
        "echo \"{event} $BGSCHED_SCHEDULED_AT $(trap \"\" TERM; date +%s.%N) $BGSCHED_RUN_ID $BGSCHED_TRIGGER $BGSCHED_INSTANCE $BGSCHED_FENCING_TOKEN\" >> {{dir}}/ledger"
    )
}

#[derive(Debug, Clone)]
struct Entry {
    event: String,
    tick: String,
    at: f64,
    run_id: String,
    trigger: String,
    instance: String,
    token: u64,
}

fn ledger(env: &Env) -> Vec<Entry> {
    env.lines("ledger")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 7, "malformed ledger line {l:?}");
            Entry {
                event: f[0].into(),
                tick: f[1].into(),
                at: f[2].parse().unwrap(),
                run_id: f[3].into(),
                trigger: f[4].into(),
                instance: f[5].into(),
                token: f[6].parse().unwrap(),
            }
        })
        .collect()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A config for `etcd` with the given job tables.
fn cluster_env(etcd: &Etcd, jobs: &str) -> Env {
    Env::new().config(&format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/test\"\nlease_ttl = \"{TTL_SECS}s\"\n\n{jobs}",
        etcd.endpoint()
    ))
}

fn beat_job() -> String {
    format!(
        "[jobs.beat]\nschedule = \"@every 1s\"\nshell = '{}'\n",
        ledger_cmd("start")
    )
}

fn long_job() -> String {
    format!(
        "[jobs.long]\nschedule = \"@every 1s\"\noverlap = \"skip\"\nshell = '{}; sleep 5; {}'\n",
        ledger_cmd("start"),
        ledger_cmd("end")
    )
}

fn leader_of(env: &Env) -> Option<String> {
    env.list_json()["leader"]["instance"]
        .as_str()
        .map(str::to_string)
}

fn start_replicas(env: &Env) -> HashMap<String, Scheduler> {
    let replicas: HashMap<String, Scheduler> = ["a", "b", "c"]
        .into_iter()
        .map(|i| (i.to_string(), env.spawn_run(i)))
        .collect();
    wait_until(PATIENCE, "a leader", || leader_of(env).is_some());
    replicas
}

/// No tick fired twice, and every run of a tick carried one token.
fn assert_each_tick_once(entries: &[Entry]) {
    let mut seen = HashSet::new();
    for e in entries.iter().filter(|e| e.event == "start") {
        assert!(
            seen.insert(e.tick.clone()),
            "tick {} fired twice: {entries:#?}",
            e.tick
        );
    }
}

/// Runs of a skip job never overlap: every start comes after the previous run's end.
fn assert_no_overlap(entries: &[Entry]) {
    let mut spans: HashMap<&str, (f64, Option<f64>)> = HashMap::new();
    for e in entries {
        let span = spans.entry(&e.run_id).or_insert((e.at, None));
        if e.event == "end" {
            span.1 = Some(e.at);
        }
    }
    let mut spans: Vec<(f64, f64, &str)> = spans
        .into_iter()
        .map(|(id, (s, end))| (s, end.unwrap_or(f64::MAX), id))
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "runs {} and {} overlapped: {entries:#?}",
            pair[0].2,
            pair[1].2
        );
    }
}

#[test]
fn three_replicas_elect_one_leader_and_fire_each_tick_once() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(&etcd, &beat_job());
    let _replicas = start_replicas(&env);
    wait_until(PATIENCE, "8 fires", || ledger(&env).len() >= 8);
    let list = env.list_json();
    assert_eq!(list["mode"], "cluster");
    assert_eq!(list["members"].as_array().unwrap().len(), 3, "{list}");
    let leader = list["leader"]["instance"].as_str().unwrap().to_string();
    let term = list["leader"]["term"].as_u64().unwrap();
    let entries = ledger(&env);
    assert_each_tick_once(&entries);
    for e in &entries {
        assert_eq!(e.instance, leader, "only the leader fires");
        assert_eq!(e.token, term, "the fencing token is the leader's term");
    }
}

#[test]
fn kill_9_of_the_leader_fails_over_and_catches_up_once() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(&etcd, &beat_job());
    let mut replicas = start_replicas(&env);
    wait_until(PATIENCE, "3 fires", || ledger(&env).len() >= 3);
    let old = leader_of(&env).unwrap();
    replicas.get_mut(&old).unwrap().kill9();
    let killed = now_secs();
    wait_until(PATIENCE, "a fire by another replica", || {
        ledger(&env).iter().any(|e| e.instance != old)
    });
    let first_new = ledger(&env)
        .into_iter()
        .find(|e| e.instance != old)
        .unwrap();
    let gap = first_new.at - killed;
    println!(
        "failover after kill -9: first fire by {} {gap:.2}s after the kill (lease_ttl {TTL_SECS}s)",
        first_new.instance
    );
    assert!(gap < TTL_SECS as f64 + 10.0, "failover took {gap:.2}s");
    wait_until(PATIENCE, "two more fires", || {
        ledger(&env).iter().filter(|e| e.instance != old).count() >= 3
    });
    let entries = ledger(&env);
    assert_each_tick_once(&entries);
    // Ticks that passed during the failover: either none was late enough to
    // count as missed (then every tick fired), or the newest missed one was
    // caught up once and the older ones recorded as missed. An on-time tick
    // that came while the catch-up run was still going was skipped (the job
    // is overlap = "skip"), and recorded so.
    let catchups: Vec<&Entry> = entries.iter().filter(|e| e.trigger == "catchup").collect();
    assert!(
        catchups.len() <= 1,
        "missed ticks are caught up at most once: {entries:#?}"
    );
    let secs = |e: &Entry| {
        chrono::DateTime::parse_from_rfc3339(&e.tick)
            .unwrap()
            .timestamp()
    };
    let fired: HashSet<i64> = entries.iter().map(secs).collect();
    let (first, last) = (*fired.iter().min().unwrap(), *fired.iter().max().unwrap());
    let unfired: Vec<i64> = (first..=last).filter(|t| !fired.contains(t)).collect();
    let caught_up = catchups.first().map(|c| secs(c));
    if let Some(c) = catchups.first() {
        assert_ne!(c.instance, old);
    }
    let older = unfired
        .iter()
        .filter(|t| caught_up.is_some_and(|c| **t < c))
        .count() as u64;
    let newer = unfired.len() as u64 - older;
    assert!(
        caught_up.is_some() || unfired.is_empty(),
        "ticks {unfired:?} passed and none was caught up: {entries:#?}"
    );
    wait_until(
        PATIENCE,
        "every unfired tick recorded as missed or skipped",
        || {
            let job = env.job_view("beat");
            job["recent_missed"].as_u64().unwrap_or(0) >= older
                && job["recent_skips"].as_u64().unwrap_or(0) >= newer
        },
    );
    let new_token = first_new.token;
    let old_token = entries.iter().find(|e| e.instance == old).unwrap().token;
    assert!(
        new_token > old_token,
        "the fencing token grows with the term"
    );
}

#[test]
fn a_paused_leader_fires_nothing_after_it_resumes() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(&etcd, &beat_job());
    let replicas = start_replicas(&env);
    wait_until(PATIENCE, "3 fires", || ledger(&env).len() >= 3);
    let old = leader_of(&env).unwrap();
    replicas[&old].signal(Signal::STOP);
    let paused = now_secs();
    wait_until(PATIENCE, "a new leader firing", || {
        ledger(&env).iter().any(|e| e.instance != old)
    });
    // Keep it stopped well past its lease, then let it run again.
    wait_until(PATIENCE, "the pause to exceed the lease", || {
        now_secs() > paused + TTL_SECS as f64 * 2.0
    });
    replicas[&old].signal(Signal::CONT);
    let resumed = now_secs();
    wait_until(PATIENCE, "the cluster to fire 4 more ticks", || {
        ledger(&env).iter().filter(|e| e.at > resumed).count() >= 4
    });
    let entries = ledger(&env);
    assert_each_tick_once(&entries);
    let stale: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.instance == old && e.at > paused)
        .collect();
    assert!(
        stale.is_empty(),
        "the stale leader fired after its pause: {stale:#?}"
    );
    // It rejoined as a standby.
    wait_until(
        PATIENCE,
        "the resumed instance back among the members",
        || {
            env.list_json()["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["instance"] == old.as_str())
        },
    );
    assert_ne!(leader_of(&env).unwrap(), old);
}

#[test]
fn sigterm_hands_leadership_over_in_under_a_second() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(&etcd, &beat_job());
    let mut replicas = start_replicas(&env);
    wait_until(PATIENCE, "2 fires", || ledger(&env).len() >= 2);
    let old = leader_of(&env).unwrap();
    let start = Instant::now();
    replicas[&old].signal(Signal::TERM);
    let mut new_leader = None;
    wait_until(PATIENCE, "a new leader", || {
        new_leader = etcd
            .get("/test/leader")
            .filter(|v| !v.contains(&format!("\"instance\":\"{old}\"")));
        new_leader.is_some()
    });
    let handoff = start.elapsed();
    println!(
        "graceful handoff: new leader elected {handoff:?} after SIGTERM ({})",
        new_leader.unwrap()
    );
    assert!(
        handoff < Duration::from_secs(TTL_SECS),
        "handoff took {handoff:?}, as long as a lease expiry"
    );
    assert_eq!(replicas.get_mut(&old).unwrap().wait_exit(PATIENCE), Some(0));
    wait_until(PATIENCE, "fires by the new leader", || {
        ledger(&env).iter().filter(|e| e.instance != old).count() >= 2
    });
    assert_each_tick_once(&ledger(&env));
}

/// A 5-second job every second, `overlap = "skip"`: interrupt its leader
/// mid-run with `fault` and check that the new leader never starts it while
/// the interrupted run is alive, and that the interrupted run is recorded.
fn skip_holds_across_failover(fault: Signal) {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(&etcd, &long_job());
    let mut replicas = start_replicas(&env);
    wait_until(PATIENCE, "a run to start", || !ledger(&env).is_empty());
    let first = ledger(&env)[0].clone();
    let old = first.instance.clone();
    match fault {
        Signal::KILL => replicas.get_mut(&old).unwrap().kill9(),
        sig => replicas[&old].signal(sig),
    }
    wait_until(PATIENCE, "a run started by another replica", || {
        ledger(&env)
            .iter()
            .any(|e| e.event == "start" && e.instance != old)
    });
    wait_until(PATIENCE, "that run to end", || {
        ledger(&env)
            .iter()
            .any(|e| e.event == "end" && e.instance != old)
    });
    if fault == Signal::STOP {
        replicas[&old].signal(Signal::CONT);
    }
    let entries = ledger(&env);
    assert_no_overlap(&entries);
    assert_each_tick_once(&entries);
    assert!(
        entries
            .iter()
            .any(|e| e.event == "end" && e.run_id == first.run_id),
        "the interrupted run finished: {entries:#?}"
    );
    wait_until(PATIENCE, "the interrupted run's record", || {
        history_has(&etcd, &first.run_id)
    });
}

fn history_has(etcd: &Etcd, run_id: &str) -> bool {
    etcd.get(&format!("/test/history/long/{run_id}"))
        .is_some_and(|v| v.contains("\"outcome\":\"success\""))
}

#[test]
fn skip_holds_when_the_leader_is_killed_mid_run() {
    skip_holds_across_failover(Signal::KILL);
}

#[test]
fn skip_holds_when_the_leader_is_paused_mid_run() {
    skip_holds_across_failover(Signal::STOP);
}

#[test]
fn skip_holds_when_the_leader_is_stopped_gracefully_mid_run() {
    skip_holds_across_failover(Signal::TERM);
}

#[test]
fn nothing_fires_while_etcd_is_down_and_firing_resumes_after() {
    let _serial = serial();
    let mut etcd = Etcd::start();
    let env = cluster_env(&etcd, &beat_job());
    let _replicas = start_replicas(&env);
    wait_until(PATIENCE, "3 fires", || ledger(&env).len() >= 3);
    etcd.stop();
    let down = now_secs();
    // The leader may fire a tick that was already claimed when etcd went
    // away; nothing may start later than that.
    wait_until(PATIENCE, "3 lease periods", || {
        now_secs() > down + 3.0 * TTL_SECS as f64
    });
    let during: Vec<Entry> = ledger(&env)
        .into_iter()
        .filter(|e| e.at > down + 0.5)
        .collect();
    assert!(during.is_empty(), "fired while etcd was down: {during:#?}");
    etcd.restart();
    let up = now_secs();
    wait_until(PATIENCE, "fires after etcd is back", || {
        ledger(&env).iter().filter(|e| e.at > up).count() >= 3
    });
    let entries = ledger(&env);
    assert_each_tick_once(&entries);
    println!(
        "etcd back at +{:.1}s; first fire after {:.2}s",
        up - down,
        entries.iter().find(|e| e.at > up).unwrap().at - up
    );
}

#[test]
fn trigger_from_any_machine_runs_on_the_leader_and_returns_the_exit_code() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(
        &etcd,
        &format!(
            "[jobs.adhoc]\nschedule = \"@yearly\"\nshell = '{}; echo adhoc-output; exit 3'\n",
            ledger_cmd("start")
        ),
    );
    let _replicas = start_replicas(&env);
    let leader = leader_of(&env).unwrap();
    let out = env
        .cmd(&["trigger", "adhoc", "--instance-id", "laptop"])
        .run()
        .code(3);
    assert!(out.stdout.contains("adhoc-output"), "{out:?}");
    let entries = ledger(&env);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].instance, leader, "ran on the leader");
    assert_eq!(entries[0].trigger, "manual");
}

#[test]
fn trigger_without_a_leader_gives_up_with_69() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(
        &etcd,
        "[jobs.adhoc]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n",
    );
    let out = env
        .cmd(&["trigger", "adhoc", "--timeout", "1s"])
        .run()
        .code(69);
    assert!(out.stderr.contains("no leader accepted"), "{out:?}");
}

#[test]
fn trigger_of_a_running_skip_job_exits_75_cluster_wide() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(
        &etcd,
        &format!(
            "[jobs.slow]\nschedule = \"@yearly\"\nshell = '{}; sleep 30'\n",
            ledger_cmd("start")
        ),
    );
    let _replicas = start_replicas(&env);
    let run_id = env.trigger_detached("slow");
    wait_until(PATIENCE, "the detached run to start", || {
        !ledger(&env).is_empty()
    });
    assert_eq!(ledger(&env)[0].run_id, run_id);
    let out = env.cmd(&["trigger", "slow"]).run().code(75);
    assert!(out.stderr.contains("already running"), "{out:?}");
}

#[test]
fn a_run_whose_supervisor_is_killed_is_stopped_and_recorded_lost() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(
        &etcd,
        &format!(
            "[jobs.slow]\nschedule = \"@yearly\"\nshell = '{}; echo $$ >> {{dir}}/jobpid; sleep 600 & echo $! >> {{dir}}/grandchildren; wait'\n",
            ledger_cmd("start")
        ),
    );
    let _replicas = start_replicas(&env);
    let run_id = env.trigger_detached("slow");
    wait_until(PATIENCE, "the job's pid", || {
        !env.lines("jobpid").is_empty()
    });
    wait_until(PATIENCE, "the job's background child", || {
        !env.lines("grandchildren").is_empty()
    });
    let job_pid: i32 = env.lines("jobpid")[0].parse().unwrap();
    let supervisor = parent_of(job_pid).expect("supervisor pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(supervisor).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    wait_until(PATIENCE, "the job to die with its supervisor", || {
        !alive(job_pid)
    });
    let grandchild: i32 = env.lines("grandchildren")[0].parse().unwrap();
    wait_until(PATIENCE, "the rest of its group to be killed", || {
        !alive(grandchild)
    });
    wait_until(PATIENCE, "the lost run's record", || {
        etcd.get(&format!("/test/history/slow/{run_id}"))
            .is_some_and(|v| v.contains("\"outcome\":\"lost\""))
    });
    assert_eq!(env.job_view("slow")["state"], "idle");
}

/// `overlap = "queue"` and `"replace"` hold cluster-wide through a `kill -9`
/// of the leader: the runs (and the one waiting) belong to supervisors that
/// outlive it, and the new leader's claims see them in etcd.
fn overlap_policy_holds_across_failover(overlap: &str, shell: String, runs: usize) {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(
        &etcd,
        &format!(
            "[jobs.long]\nschedule = \"@every 1s\"\noverlap = \"{overlap}\"\nkill_grace = \"5s\"\nshell = '{shell}'\n"
        ),
    );
    let mut replicas = start_replicas(&env);
    wait_until(PATIENCE, "a run to start", || !ledger(&env).is_empty());
    let old = ledger(&env)[0].instance.clone();
    replicas.get_mut(&old).unwrap().kill9();
    wait_until(
        PATIENCE * 2,
        "runs claimed by the new leader to end",
        || {
            ledger(&env)
                .iter()
                .filter(|e| e.event == "end" && e.instance != old)
                .count()
                >= runs
        },
    );
    let entries = ledger(&env);
    assert_no_overlap(&entries);
    assert_each_tick_once(&entries);
}

#[test]
fn queue_holds_across_failover() {
    overlap_policy_holds_across_failover(
        "queue",
        format!("{}; sleep 2; {}", ledger_cmd("start"), ledger_cmd("end")),
        2,
    );
}

#[test]
fn replace_holds_across_failover() {
    // Each tick stops the previous run, which logs its end on SIGTERM.
    overlap_policy_holds_across_failover(
        "replace",
        format!(
            "fin() {{ {}; exit 0; }}; trap fin TERM; {}; sleep 60 & wait",
            ledger_cmd("end"),
            ledger_cmd("start")
        ),
        3,
    );
}

/// `grpc_server_started_total` of one gRPC method, from etcd's /metrics.
fn etcd_calls(etcd: &Etcd, method: &str) -> u64 {
    let (_, body) =
        common::etcd::http(etcd.client_port(), "GET", "/metrics", None).expect("etcd /metrics");
    body.lines()
        .filter(|l| {
            l.starts_with("grpc_server_started_total")
                && l.contains(&format!("grpc_method=\"{method}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn in_steady_state_a_fire_reuses_a_finished_runs_lease_instead_of_granting_one() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(&etcd, &beat_job());
    let _a = env.spawn_run("a");
    wait_until(PATIENCE, "the first runs", || ledger(&env).len() >= 3);
    let (grants, fires) = (etcd_calls(&etcd, "LeaseGrant"), ledger(&env).len());
    wait_until(PATIENCE, "eight more runs", || {
        ledger(&env).len() >= fires + 8
    });
    let fired = ledger(&env).len() - fires;
    let granted = etcd_calls(&etcd, "LeaseGrant") - grants;
    // Each run's lease comes back when it ends and is renewed for the next
    // fire; a grant is only needed when a lease could not come back in time.
    assert!(
        granted * 4 <= fired as u64,
        "{granted} leases granted for {fired} fires"
    );
    assert_each_tick_once(&ledger(&env));
}

/// `bgsched run` with its wall clock `offset` off (libfaketime; timers keep
/// the real monotonic clock). Its supervisors and jobs inherit the offset,
/// as they would on a host whose clock is off.
fn spawn_with_clock(env: &Env, instance: &str, offset: &str) -> Scheduler {
    let log = env.path(&format!("{instance}.log"));
    let mut cmd = env
        .cmd(&["run", "--instance-id", instance, "--http", "127.0.0.1:0"])
        .0;
    cmd.env(
        "LD_PRELOAD",
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    )
    .env("FAKETIME", offset)
    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(std::fs::OpenOptions::new().append(true).open(&log).unwrap());
    Scheduler {
        child: cmd.spawn().expect("spawn bgsched run"),
        log,
        instance: instance.to_string(),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn tick_secs(tick: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(tick)
        .expect("tick")
        .timestamp_millis() as f64
        / 1000.0
}

#[test]
fn a_replica_with_its_clock_an_hour_ahead_stops_leading_and_the_job_fires_on_time() {
    let _serial = serial();
    let etcd = Etcd::start();
    let env = cluster_env(&etcd, &beat_job());
    // Alone, the skewed replica has nothing to compare with: it leads and
    // fires ticks an hour ahead.
    let skewed = spawn_with_clock(&env, "skewed", "+1h");
    wait_until(PATIENCE, "fires by the skewed replica", || {
        ledger(&env)
            .iter()
            .filter(|e| e.instance == "skewed")
            .count()
            >= 2
    });
    let a = env.spawn_run_with("a", &["--http", "127.0.0.1:0"]);
    let b = env.spawn_run_with("b", &["--http", "127.0.0.1:0"]);
    let since = Instant::now();
    while ledger(&env)
        .iter()
        .filter(|e| e.instance != "skewed")
        .count()
        < 4
    {
        assert!(
            since.elapsed() < PATIENCE,
            "no fires by a replica with a correct clock; logs:\n{}\n{}\n{}",
            skewed.log_text(),
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It stopped leading, and said why, with the measured skew.
    let text = skewed.log_text();
    // Measured against the members live at the time: with only one of
    // the correct replicas up yet, the median of two clocks says 30m.
    let line = text
        .lines()
        .filter(|l| l.contains("this replica's clock is skewed"))
        .find(|l| l.contains("59m") || l.contains("1h"))
        .unwrap_or_else(|| panic!("no word of the hour's skew in\n{text}"));
    assert!(
        line.contains("ERROR") && line.contains("ahead of the median"),
        "{line}"
    );
    let (code, body) = http_get(skewed.http_port(), "/readyz").expect("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("skewed"), "{body}");
    let (_, metrics) = http_get(skewed.http_port(), "/metrics").expect("/metrics");
    let skew = sample(&metrics, "bgsched_clock_skew_seconds");
    assert!(
        (3590.0..3610.0).contains(&skew),
        "skew {skew} in\n{metrics}"
    );
    // Once a correct replica fired, the skewed one fired nothing more.
    let entries = ledger(&env);
    let first_correct = entries.iter().position(|e| e.instance != "skewed").unwrap();
    assert!(
        entries[first_correct..]
            .iter()
            .all(|e| e.instance != "skewed"),
        "the skewed replica fired after losing leadership: {entries:#?}"
    );
    // The new leader found the last tick an hour ahead, said so, and
    // resumed from its own clock (the third clock agrees with it): the job
    // fires on time, not an hour later.
    let leader = entries.last().unwrap().instance.clone();
    let replica = if leader == "a" { &a } else { &b };
    let text = replica.log_text();
    let line = text
        .lines()
        .find(|l| l.contains("last fired tick is"))
        .unwrap_or_else(|| panic!("no word of the tick ahead in\n{text}"));
    assert!(
        line.contains("ERROR") && line.contains("resuming from this clock"),
        "{line}"
    );
    let (_, metrics) = http_get(replica.http_port(), "/metrics").expect("/metrics");
    assert!(
        sample(&metrics, "bgsched_last_tick_ahead_total{job=\"beat\"}") >= 1.0,
        "{metrics}"
    );
    for e in &entries[first_correct..] {
        let late = e.at - tick_secs(&e.tick);
        assert!(
            (0.0..3.0).contains(&late),
            "tick {} ran {late:.2}s after it was due",
            e.tick
        );
    }
    assert_each_tick_once(&entries);

    // The other correct replica dies. The leader has only the skewed clock
    // left to compare with, already found out by three clocks: it keeps
    // leading on its own clock, and the skewed one still does not lead.
    let (mut standby, leader) = if leader == "a" { (b, a) } else { (a, b) };
    let before = ledger(&env).len();
    standby.kill9();
    let killed_at = unix_now();
    let wait_past = Instant::now() + Duration::from_secs(3 * TTL_SECS + 2);
    wait_until(PATIENCE, "fires well after the standby died", || {
        Instant::now() > wait_past
            && ledger(&env)
                .iter()
                .skip(before)
                .filter(|e| e.at > killed_at + (3 * TTL_SECS) as f64)
                .count()
                >= 2
    });
    // In ledger order: the skewed replica's jobs write its clock's time.
    let entries = ledger(&env);
    let after: Vec<&Entry> = entries[before..].iter().collect();
    assert!(
        after.iter().all(|e| e.instance == leader.instance),
        "after the standby died someone other than the leader fired: {after:#?}\n{}",
        leader.log_text()
    );
    let gaps: Vec<f64> = after.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps.iter().all(|g| *g < 2.5),
        "the leader stopped firing after the standby died: gaps {gaps:?}\n{}",
        leader.log_text()
    );
    let (code, body) = http_get(leader.http_port(), "/readyz").expect("/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("found off the majority"), "{body}");
    assert_each_tick_once(&entries);
}

/// Every history entry under the test prefix, parsed.
fn all_history(etcd: &Etcd) -> Vec<serde_json::Value> {
    common::etcd::kv_range_prefix(&etcd.endpoint(), "/test/history/")
        .expect("read history")
        .into_iter()
        .map(|(_, v)| serde_json::from_str(&v).expect("a JSON record"))
        .collect()
}

#[test]
fn an_overloaded_leader_records_what_it_drops_as_missed_once_and_stops_firing_within_1s_of_sigterm()
{
    let _serial = serial();
    let etcd = Etcd::start();
    // Far more due work than two shared cores can start every second.
    let jobs: String = (0..800)
        .map(|i| format!("[jobs.j{i:03}]\nschedule = \"@every 1s\"\ncommand = [\"true\"]\n"))
        .collect();
    let env = cluster_env(&etcd, &format!("[scheduler]\nhistory = 1000\n\n{jobs}"));
    let log = env.path("a.log");
    let mut cmd = env
        .cmd(&[
            "--log-format",
            "json",
            "run",
            "--instance-id",
            "a",
            "--http",
            "127.0.0.1:0",
        ])
        .0;
    cmd.stdout(std::fs::File::create(&log).unwrap()).stderr(
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap(),
    );
    let mut run = Scheduler {
        child: cmd.spawn().expect("spawn bgsched run"),
        log,
        instance: "a".into(),
    };
    wait_until(PATIENCE * 2, "ticks dropped as overloaded", || {
        run.log_text().contains("overloaded: ")
    });
    std::thread::sleep(Duration::from_secs(3));
    let port = {
        const MARK: &str = "/status on http://127.0.0.1:";
        let text = run.log_text();
        let at = text.find(MARK).expect("the http address in the log") + MARK.len();
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u16>().expect("port")
    };
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics");
    let overloaded: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("bgsched_overloaded_ticks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(overloaded > 0.0, "no overloaded ticks counted");
    run.signal(Signal::TERM);
    let signalled = now_secs();
    run.wait_exit(PATIENCE * 4);

    // No new fire more than a second after the signal.
    let (mut last_fire, mut fires) = (0.0f64, 0);
    for line in run.log_text().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["message"] == "fired" {
            fires += 1;
            last_fire = last_fire.max(tick_secs(v["timestamp"].as_str().unwrap()));
        }
    }
    println!(
        "{fires} fires, the last {:.3}s after SIGTERM",
        last_fire - signalled
    );
    assert!(
        last_fire - signalled < 1.0,
        "fired {:.3}s after SIGTERM",
        last_fire - signalled
    );

    let history = all_history(&etcd);
    let outcome = |r: &serde_json::Value| r["outcome"].as_str().unwrap_or("").to_string();
    let reason = |r: &serde_json::Value| r["reason"].as_str().unwrap_or("").to_string();
    // Dropped ticks are missed, for overload; "could not start" stays for
    // commands that cannot start.
    assert!(
        history
            .iter()
            .any(|r| outcome(r) == "missed" && reason(r).starts_with("overloaded: ")),
        "no missed entry for overload"
    );
    println!(
        "{} ticks dropped as overloaded",
        history
            .iter()
            .filter(|r| reason(r).starts_with("overloaded: "))
            .map(|r| r["missed_ticks"].as_u64().unwrap_or(1))
            .sum::<u64>()
    );
    let start_failed: Vec<&serde_json::Value> = history
        .iter()
        .filter(|r| outcome(r) == "start_failed")
        .collect();
    assert!(start_failed.is_empty(), "{start_failed:#?}");
    // No tick is covered twice: by two missed entries, or by a run and a
    // missed entry.
    let mut covered: HashMap<(String, i64), String> = HashMap::new();
    for r in &history {
        let job = r["job"].as_str().unwrap().to_string();
        let newest = (tick_secs(r["tick"].as_str().unwrap()) * 1000.0).round() as i64;
        let ticks: Vec<i64> = match outcome(r).as_str() {
            "missed" => {
                let n = r["missed_ticks"].as_i64().unwrap_or(1);
                (0..n).map(|k| newest - 1000 * k).collect()
            }
            // A retry's entries share the run's tick.
            _ if r["attempt"].as_u64().unwrap_or(1) > 1 => continue,
            _ => vec![newest],
        };
        for t in ticks {
            let what = format!("{} {}", outcome(r), reason(r));
            if let Some(before) = covered.insert((job.clone(), t), what.clone()) {
                panic!("tick {t} of {job} is covered twice:\n  {before}\n  {what}");
            }
        }
    }
}

/// A `missed` entry consumes its ticks as a claim does: the job's last tick
/// moves up to the entry's newest tick (never back), in the transaction
/// that writes the entry and only under the writer's term, so the next
/// leader resumes after those ticks instead of recording them missed again.
#[test]
fn a_missed_entry_moves_the_last_tick_and_a_claimed_ticks_entry_outlives_its_term() {
    use bgsched::config::Overlap;
    use bgsched::coordination::{
        ClaimRejected, ClaimRequest, Coordinator, Etcd as Backend, Outcome, RunKey, RunRecord,
        Trigger,
    };
    use chrono::{DateTime, TimeZone, Utc};
    let _serial = serial();
    let etcd = Etcd::start();
    let cfg = etcd_config(vec![etcd.endpoint()], "/missed");
    let at = |s: i64| Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap();
    let missed = |tick: DateTime<Utc>, term: u64| {
        let mut rec = RunRecord::not_run(
            RunKey::new("job", tick, Trigger::Schedule, "a"),
            Outcome::Missed,
            "test".into(),
        );
        rec.key.term = term;
        rec
    };
    let claim = |tick| ClaimRequest {
        job: "job",
        tick,
        trigger: Trigger::Schedule,
        instance: "a",
        overlap: Overlap::Allow,
        advances_schedule: true,
        request: None,
        group: None,
        upstream: None,
        run_on: &bgsched::config::RunOn::Leader,
        placement: None,
        params: None,
        first_attempt: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = Backend::connect(cfg.clone()).await.expect("connect a");
        let lead = a.acquire_leadership("a").await.expect("a leads");
        let term_a = lead.term;
        a.claim(&lead, claim(at(0))).await.expect("claim tick 0");
        assert_eq!(a.record(&missed(at(3), term_a)).await.ok(), Some(true));
        assert_eq!(a.last_fired("job").await.unwrap(), Some(at(3)));
        // An older entry written late moves nothing back.
        assert_eq!(a.record(&missed(at(1), term_a)).await.ok(), Some(true));
        assert_eq!(a.last_fired("job").await.unwrap(), Some(at(3)));
        assert!(matches!(
            a.claim(&lead, claim(at(2))).await,
            Err(ClaimRejected::AlreadyFired(_))
        ));
        a.claim(&lead, claim(at(4)))
            .await
            .expect("claim tick 4 after the entry");
        // Two entries racing for the job's last tick: both are written.
        let (five, six) = (missed(at(5), term_a), missed(at(6), term_a));
        let (r5, r6) = tokio::join!(a.record(&five), a.record(&six));
        assert_eq!(
            (r5.ok(), r6.ok()),
            (Some(true), Some(true)),
            "one of two racing entries was dropped"
        );
        assert_eq!(a.last_fired("job").await.unwrap(), Some(at(6)));
        a.resign(lead).await;

        let b = Backend::connect(cfg.clone()).await.expect("connect b");
        let lead_b = b.acquire_leadership("b").await.expect("b leads");
        assert_eq!(b.last_fired("job").await.unwrap(), Some(at(6)));
        // A deposed leader's entry is refused and moves nothing...
        assert_eq!(a.record(&missed(at(10), term_a)).await.ok(), Some(false));
        // ...but the entry of a tick its term claimed (a run it could not
        // start in time, say, paused between claim and start) is written:
        // it is that tick's only trace.
        let not_started = missed(at(4), term_a);
        assert_eq!(
            a.record_claimed(&not_started).await.ok(),
            Some(true),
            "the entry of a claimed tick was refused once its term ended"
        );
        assert_eq!(b.last_fired("job").await.unwrap(), Some(at(6)));
        b.claim(&lead_b, claim(at(7)))
            .await
            .expect("b claims the tick after a's");
        b.resign(lead_b).await;
        let c = Backend::connect(cfg).await.expect("connect c");
        let lead_c = c.acquire_leadership("c").await.expect("c leads");
        assert_eq!(c.last_fired("job").await.unwrap(), Some(at(7)));
        c.resign(lead_c).await;
    });
}

/// A job that never fired counts from when a leader first scheduled it (at
/// the start of its term, or when a reload added the job), for every later
/// leader too: its first tick, due while no replica led (the leader was
/// killed just before it), is caught up by the next leader instead of
/// being passed over without a trace.
#[test]
fn a_never_fired_jobs_first_tick_due_between_leaders_is_caught_up() {
    first_tick_due_between_leaders_is_caught_up(false);
}

#[test]
fn a_job_added_by_a_reload_whose_first_tick_falls_between_leaders_is_caught_up() {
    first_tick_due_between_leaders_is_caught_up(true);
}

fn first_tick_due_between_leaders_is_caught_up(added_by_reload: bool) {
    let _serial = serial();
    let etcd = Etcd::start();
    let tenth = format!(
        "[jobs.tenth]\nschedule = \"*/10 * * * * *\"\nshell = '{}'\n",
        ledger_cmd("start")
    );
    let idle = "[jobs.idle]\nschedule = \"0 0 1 1 *\"\nshell = 'true'\n";
    let env = cluster_env(&etcd, if added_by_reload { idle } else { &tenth });
    // Start when the next tick is 5-9 s away, so the leader can be killed
    // well before it.
    while !(1..=5).contains(&(unix_now() as u64 % 10)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut a = env.spawn_run("a");
    if added_by_reload {
        wait_until(PATIENCE, "a leads", || {
            a.log_text().contains("leading: firing jobs")
        });
        let text = std::fs::read_to_string(env.path("jobs.toml")).unwrap();
        env.write("jobs.toml", &format!("{text}\n{tenth}"));
        a.signal(Signal::HUP);
    }
    // Killed once its term has begun the job's schedule (a kill between
    // winning and that write leaves the job to start with the next leader).
    wait_until(PATIENCE, "a begins the job's schedule", || {
        common::etcd::kv_range_prefix(&etcd.endpoint(), "/test/last/tenth")
            .is_ok_and(|kvs| !kvs.is_empty())
    });
    a.kill9();
    let killed_at = unix_now();
    let first_tick = ((killed_at as u64) / 10 + 1) * 10;
    assert!(
        ledger(&env).is_empty(),
        "the job fired before the test could kill its leader"
    );
    while unix_now() < first_tick as f64 + 1.0 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = env.spawn_run("b");
    wait_until(PATIENCE, "a fire by b", || !ledger(&env).is_empty());
    let first = &ledger(&env)[0];
    assert_eq!(
        (tick_secs(&first.tick) as u64, first.trigger.as_str()),
        (first_tick, "catchup"),
        "the first tick, due while nobody led, was not caught up: {first:?}\n{}",
        b.log_text()
    );
}

/// A claimed run whose marker expires before the next leader wins (its
/// claim's answer was lost, say, and the claimer lost its term before it
/// could find out) is still recorded `lost`, by the next leader: every
/// replica keeps the markers deleted lately, not only the leader of the
/// moment, so none expires unseen in the gap between two terms.
#[test]
fn a_marker_that_expires_between_two_terms_is_recorded_lost_by_the_next_leader() {
    use bgsched::config::Overlap;
    use bgsched::coordination::{ClaimRequest, Coordinator, Etcd as Backend, Trigger};
    use chrono::{TimeZone, Utc};
    use std::sync::Arc;
    let _serial = serial();
    let etcd = Etcd::start();
    let cfg = etcd_config(vec![etcd.endpoint()], "/gap");
    let endpoint = etcd.endpoint();
    let keys = |prefix: &str| common::etcd::kv_range_prefix(&endpoint, prefix).unwrap_or_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = Backend::connect(cfg.clone()).await.expect("connect a");
        let lead = a.acquire_leadership("a").await.expect("a leads");
        let b = Arc::new(Backend::connect(cfg.clone()).await.expect("connect b"));
        let standby = b.clone();
        let campaign = tokio::spawn(async move { standby.acquire_leadership("b").await });
        wait_until(PATIENCE, "b stands by", || {
            !keys("/gap/members/b").is_empty()
        });
        let claim = a
            .claim(
                &lead,
                ClaimRequest {
                    job: "job",
                    tick: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
                    trigger: Trigger::Schedule,
                    instance: "a",
                    overlap: Overlap::Skip,
                    advances_schedule: true,
                    request: None,
                    group: None,
                    upstream: None,
                    run_on: &bgsched::config::RunOn::Leader,
                    placement: None,
                    params: None,
                    first_attempt: None,
                },
            )
            .await
            .expect("claim");
        let run_id = claim.run_id.clone();
        // Nobody starts the run or keeps its lease alive, and a's term
        // stops acting (its watches end with its `Leadership`) while its
        // session keeps the leader key: nobody leads when the marker
        // expires. Then a goes away and b takes over.
        drop(claim);
        drop(lead);
        wait_until(PATIENCE, "the marker expires", || {
            keys("/gap/active/").is_empty()
        });
        a.shutdown().await;
        let _lead_b = campaign.await.unwrap().expect("b leads");
        let history = format!("/gap/history/job/{run_id}");
        wait_until(PATIENCE, "a lost record of the claimed run", || {
            keys(&history)
                .iter()
                .any(|(_, v)| v.contains("\"outcome\":\"lost\""))
        });
    });
}

/// A claim whose transaction commits but whose answer is lost (the
/// connection to etcd breaks just after the request went out) is found
/// again by the claimer, whichever way it went: committed as a skip under
/// `overlap = "skip"`, it is that skip, not an error whose retry finds the
/// tick taken and records it missed; committed as a run, it is that run.
/// Instance "a"'s claim of `job`'s tick `secs` after 2027-01-15T08:00:00Z,
/// under `overlap = "skip"`.
fn skip_claim(job: &str, secs: i64) -> bgsched::coordination::ClaimRequest<'_> {
    use chrono::TimeZone;
    bgsched::coordination::ClaimRequest {
        job,
        tick: chrono::Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap(),
        trigger: bgsched::coordination::Trigger::Schedule,
        instance: "a",
        overlap: bgsched::config::Overlap::Skip,
        advances_schedule: true,
        request: None,
        group: None,
        upstream: None,
        run_on: &bgsched::config::RunOn::Leader,
        placement: None,
        params: None,
        first_attempt: None,
    }
}

#[test]
fn a_claim_committed_with_its_answer_lost_is_found_again() {
    use bgsched::coordination::{ClaimRejected, Coordinator, Etcd as Backend, Turn};
    let _serial = serial();
    let etcd = Etcd::start();
    let proxy = common::proxy::LossyProxy::start(etcd.client_port());
    let mut cfg = etcd_config(vec![proxy.endpoint()], "/lostanswer");
    // Room for the cuts (1 s each) inside one request deadline, and for
    // the whole test inside the first run's lease, which nobody renews.
    cfg.cluster.lease_ttl = Duration::from_secs(20);
    let endpoint = etcd.endpoint();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = Backend::connect(cfg.clone()).await.expect("connect");
        let lead = a.acquire_leadership("a").await.expect("a leads");
        let running = a.claim(&lead, skip_claim("job", 0)).await.expect("first claim");
        assert!(matches!(running.turn, Turn::Now));
        // A skip leaves its lease spare: the next claim needs no grant, so
        // its transaction is the first request sent blind.
        let skip = a.claim(&lead, skip_claim("job", 1)).await;
        assert!(matches!(skip, Err(ClaimRejected::StillRunning(_))), "{skip:?}");

        proxy.lose_next_answers();
        let blind = a.claim(&lead, skip_claim("job", 2)).await;
        assert!(proxy.cut_done().is_some_and(|n| n > 0), "no request went out blind");
        match &blind {
            Err(ClaimRejected::StillRunning(Some(active))) => {
                assert_eq!(active.key.run_id, running.run_id)
            }
            other => panic!("the skip committed with its answer lost came back as {other:?}"),
        }
        let last = common::etcd::kv_range_prefix(&endpoint, "/lostanswer/last/job").unwrap();
        assert!(last[0].1.contains("2027-01-15T08:00:02Z"), "{last:?}");
        // Taken once: asking again is "already fired".
        let again = a.claim(&lead, skip_claim("job", 2)).await;
        assert!(matches!(again, Err(ClaimRejected::AlreadyFired(_))), "{again:?}");

        // Committed as a run: that run, its marker under the run id
        // returned. (The blind claim above left its lease spare again.)
        proxy.lose_next_answers();
        let started = a.claim(&lead, skip_claim("other", 1)).await;
        assert!(proxy.cut_done().is_some_and(|n| n > 0), "no request went out blind");
        let started = started.expect("the run committed with its answer lost");
        let marker = format!("/lostanswer/active/other/{}", started.run_id);
        assert_eq!(
            common::etcd::kv_range_prefix(&endpoint, &marker).unwrap().len(),
            1,
            "no marker for the run id the claim returned"
        );

        // The read-back is cut off too: the claim fails, and its retry (the
        // scheduler's, moments later) goes out as the same claim, so it
        // still finds the skip its first attempt committed. (A skip first,
        // for a spare lease.)
        let skip = a.claim(&lead, skip_claim("job", 3)).await;
        assert!(matches!(skip, Err(ClaimRejected::StillRunning(_))), "{skip:?}");
        proxy.lose_answers_times(2);
        let unknown = a.claim(&lead, skip_claim("job", 4)).await;
        // The read-back went out blind too, or was written into the cut
        // connection and never arrived: either way the claim cannot tell.
        let blind = proxy.calm();
        assert!(blind >= 1, "the claim was not sent blind: {unknown:?}");
        assert!(matches!(unknown, Err(ClaimRejected::Backend(_))), "{unknown:?}");
        let retried = a.claim(&lead, skip_claim("job", 4)).await;
        assert!(
            matches!(&retried, Err(ClaimRejected::StillRunning(Some(r))) if r.key.run_id == running.run_id),
            "the retry of a claim committed unanswered came back as {retried:?}"
        );

        // A run claimed unanswered whose marker expires before the claim
        // hears back (nobody keeps its lease alive): the retry is told so,
        // and leaves the tick to that run's `lost` record.
        // (A skip first, for a young spare lease.)
        let skip = a.claim(&lead, skip_claim("job", 5)).await;
        assert!(matches!(skip, Err(ClaimRejected::StillRunning(_))), "{skip:?}");
        proxy.lose_answers_times(2);
        let unknown = a.claim(&lead, skip_claim("fresh", 0)).await;
        assert!(proxy.calm() >= 1, "the claim was not sent blind: {unknown:?}");
        assert!(matches!(unknown, Err(ClaimRejected::Backend(_))), "{unknown:?}");
        // The leader records the run `lost` once its marker expires.
        wait_until(PATIENCE, "a lost record of the unanswered run", || {
            common::etcd::kv_range_prefix(&endpoint, "/lostanswer/history/fresh/")
                .unwrap()
                .iter()
                .any(|(_, v)| v.contains("\"outcome\":\"lost\""))
        });
        let retried = a.claim(&lead, skip_claim("fresh", 0)).await;
        assert!(
            matches!(retried, Err(ClaimRejected::Ended(_))),
            "the retry of a run whose marker expired came back as {retried:?}"
        );
        drop(running);
    });
}

/// Claims in flight together go out as one transaction (issue 13), and
/// when that transaction's answer is lost, each claim finds out for itself
/// how it went: the skip is a skip, the runs are runs, each once.
#[test]
fn claims_sent_together_with_their_answer_lost_are_each_found_again() {
    use bgsched::coordination::{ClaimRejected, Coordinator, Etcd as Backend, Turn};
    let _serial = serial();
    let etcd = Etcd::start();
    let proxy = common::proxy::LossyProxy::start(etcd.client_port());
    let mut cfg = etcd_config(vec![proxy.endpoint()], "/batchlost");
    cfg.cluster.lease_ttl = Duration::from_secs(20);
    let endpoint = etcd.endpoint();
    // One thread: the three claims are queued before the sender runs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = Backend::connect(cfg.clone()).await.expect("connect");
        let lead = a.acquire_leadership("a").await.expect("a leads");
        let running = a.claim(&lead, skip_claim("busy", 0)).await.expect("first claim");
        // Leases ready, so the three claims below need no grant and go out
        // in one transaction, which the proxy answers into a cut.
        a.prepare(3).await;
        proxy.lose_next_answers();
        let (busy, b, c) = tokio::join!(
            a.claim(&lead, skip_claim("busy", 1)),
            a.claim(&lead, skip_claim("b", 1)),
            a.claim(&lead, skip_claim("c", 1)),
        );
        assert!(proxy.cut_done().is_some_and(|n| n > 0), "no request went out blind");
        assert!(
            matches!(&busy, Err(ClaimRejected::StillRunning(Some(r))) if r.key.run_id == running.run_id),
            "{busy:?}"
        );
        let (b, c) = (b.expect("b's run"), c.expect("c's run"));
        assert!(matches!((&b.turn, &c.turn), (Turn::Now, Turn::Now)));
        // One transaction: every key the three claims wrote has one revision.
        let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .unwrap();
        let mut revisions = Vec::new();
        for key in [
            "/batchlost/last/busy".to_string(),
            "/batchlost/last/b".to_string(),
            "/batchlost/last/c".to_string(),
            format!("/batchlost/active/b/{}", b.run_id),
            format!("/batchlost/active/c/{}", c.run_id),
        ] {
            let got = client.get(key.as_str(), None).await.unwrap();
            let kv = got.kvs().first().unwrap_or_else(|| panic!("{key} missing"));
            revisions.push(kv.mod_revision());
        }
        revisions.dedup();
        assert_eq!(revisions.len(), 1, "{revisions:?}");
        // Each taken once: asking again is "already fired".
        for job in ["busy", "b", "c"] {
            let again = a.claim(&lead, skip_claim(job, 1)).await;
            assert!(matches!(again, Err(ClaimRejected::AlreadyFired(_))), "{job}: {again:?}");
        }
        drop(running);
    });
}

/// README "What holds", a tick is never silently lost: a skipped tick's
/// entry is written by its claim transaction, so a leader killed between
/// the claim and its own entry leaves the skip recorded (found by the
/// 30-minute soak, seed 20261204: `kill -9` of the leader right after it
/// claimed a `long` tick as a skip). The scheduler's entry, naming the
/// active run, then replaces that one: one entry per tick either way.
#[test]
fn a_skip_is_recorded_by_its_claim_and_the_schedulers_entry_replaces_it() {
    use bgsched::config::Overlap;
    use bgsched::coordination::{
        ClaimRejected, ClaimRequest, Coordinator, Etcd as Backend, Outcome, RunKey, RunRecord,
        Trigger,
    };
    use chrono::{TimeZone, Utc};
    let _serial = serial();
    let etcd = Etcd::start();
    let endpoint = etcd.endpoint();
    let cfg = etcd_config(vec![endpoint.clone()], "/ownskip");
    let at = |s: i64| Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap();
    let req = |secs| ClaimRequest {
        job: "job",
        tick: at(secs),
        trigger: Trigger::Schedule,
        instance: "a",
        overlap: Overlap::Skip,
        advances_schedule: true,
        request: None,
        group: None,
        upstream: None,
        run_on: &bgsched::config::RunOn::Leader,
        placement: None,
        params: None,
        first_attempt: None,
    };
    let entries = || {
        common::etcd::kv_range_prefix(&endpoint, "/ownskip/history/job/")
            .unwrap()
            .into_iter()
            .map(|(_, v)| serde_json::from_str::<serde_json::Value>(&v).unwrap())
            .collect::<Vec<_>>()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = Backend::connect(cfg.clone()).await.expect("connect");
        let lead = a.acquire_leadership("a").await.expect("a leads");
        let running = a.claim(&lead, req(0)).await.expect("first claim");
        let skip = a.claim(&lead, req(1)).await;
        assert!(
            matches!(skip, Err(ClaimRejected::StillRunning(_))),
            "{skip:?}"
        );
        // Nothing else written (the leader died here): the claim's entry.
        let written = entries();
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0]["outcome"], "skipped");
        assert_eq!(written[0]["tick"], "2027-01-15T08:00:01Z");
        assert_eq!(written[0]["term"], lead.term);
        assert_eq!(written[0]["reason"], "already running");

        // The scheduler's entry goes under the claim's run id and replaces it.
        let id = a.claimed_skip("job", at(1)).expect("the claim's entry id");
        assert_eq!(written[0]["run_id"], id.as_str());
        let mut full = RunRecord::not_run(
            RunKey::new("job", at(1), Trigger::Schedule, "a"),
            Outcome::Skipped,
            format!("already running: run {} since ...", running.run_id),
        );
        full.key.run_id = id.clone();
        full.key.term = lead.term;
        assert_eq!(a.record_claimed(&full).await.ok(), Some(true));
        let written = entries();
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0]["run_id"], id.as_str());
        assert!(
            written[0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&running.run_id)),
            "{written:?}"
        );
        // Only that once: an entry is otherwise never replaced.
        full.reason = Some("again".into());
        assert_eq!(a.record_claimed(&full).await.ok(), Some(false));
        assert!(a.claimed_skip("job", at(1)).is_none());
        drop(running);
    });
}

/// `list` of a cluster with more jobs than one etcd answer may carry (the
/// client takes at most 4 MiB; 100,000 jobs' last ticks are 11 MB): the
/// last ticks are read in pages, found by the 100,000-job scale benchmark.
#[test]
fn the_last_ticks_of_more_jobs_than_one_page_are_all_read() {
    use bgsched::coordination::Etcd as Backend;
    let _serial = serial();
    let etcd = Etcd::start();
    let cfg = etcd_config(vec![etcd.endpoint()], "/pages");
    let endpoint = etcd.endpoint();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
            .await
            .unwrap();
        // Padded (an unknown field, ignored) so that 10,050 of them pass
        // the 4 MiB a single answer may carry.
        let value = format!(
            r#"{{"tick":"2026-12-01T10:00:00Z","term":7,"run_id":"01a233ca-713a-7528-8973-a4a1d8531d3c","pad":"{}"}}"#,
            "x".repeat(400)
        );
        let jobs = 10_050;
        for chunk in (0..jobs).collect::<Vec<_>>().chunks(100) {
            let puts: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|i| {
                    etcd_client::TxnOp::put(format!("/pages/last/job-{i:05}"), value.as_str(), None)
                })
                .collect();
            client.txn(etcd_client::Txn::new().and_then(puts)).await.unwrap();
        }
        let backend = Backend::connect(cfg).await.expect("connect");
        let ticks = backend.last_ticks().await.expect("last ticks");
        assert_eq!(ticks.len(), jobs);
        assert!(ticks.contains_key("job-00000") && ticks.contains_key("job-10049"));
        let tick: chrono::DateTime<chrono::Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        assert!(ticks.values().all(|t| *t == tick), "the padded values were read as ticks");
    });
}

/// A claim slowed down by etcd (the soak, seed 20261205: an election
/// among the members while the claims were out) returns with its run lease
/// too old to trust; while the lease lives it is renewed and the run
/// starts, instead of the tick being dropped as overloaded.
#[test]
fn a_claimed_runs_lease_too_old_to_trust_is_renewed_while_it_lives() {
    use bgsched::coordination::{Coordinator, Etcd as Backend, Hold};
    let _serial = serial();
    let etcd = Etcd::start();
    let cfg = etcd_config(vec![etcd.endpoint()], "/refresh");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = Backend::connect(cfg.clone()).await.expect("connect");
        let lead = a.acquire_leadership("a").await.expect("a leads");
        let mut claim = a.claim(&lead, skip_claim("job", 0)).await.expect("claim");
        let Hold::Lease { granted_at, .. } = &mut claim.hold else {
            panic!("a cluster claim holds a lease: {:?}", claim.hold)
        };
        // As if the claim had taken a whole lease TTL to come back.
        *granted_at =
            chrono::Utc::now() - chrono::Duration::from_std(cfg.cluster.lease_ttl).unwrap();
        assert!(a.too_late_to_start(&claim.hold).is_some());
        assert!(
            a.refresh_hold(&mut claim.hold).await,
            "the live lease is renewed"
        );
        assert_eq!(a.too_late_to_start(&claim.hold), None);
    });
}
