//! A run's output and processes: stdout and stderr kept in the order the
//! job wrote them, the record's tail as the last 64 KiB whatever the line
//! lengths, and every descendant of the job (also those that left its
//! process group with `setsid` or by double-forking) gone once the run is
//! recorded, after a normal exit and after a timeout.

mod common;

use common::*;
use rustix::process::{Pid, Signal};
use serde_json::Value;
use std::fs;

/// The history entries of `job` whose run id the job wrote into `file`.
fn record_named_in(env: &Env, job: &str, file: &str) -> Option<Value> {
    let run_id = env.lines(file).into_iter().next()?;
    env.records(job)
        .into_iter()
        .find(|r| r["run_id"] == run_id.as_str() && r["outcome"] != "running")
}

fn wait_for_record(env: &Env, job: &str, file: &str) -> Value {
    let mut rec = None;
    wait_until(PATIENCE, "the run's final record", || {
        rec = record_named_in(env, job, file);
        rec.is_some()
    });
    rec.unwrap()
}

/// Kills the listed pids when the test ends, however it ends.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if let Some(p) = Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            }
        }
    }
}

/// Lines `out1`, `err2`, `out3`, ... alternating between stdout and
/// stderr, as one shell loop writes them.
const ALTERNATING: usize = 400;

fn alternating_lines() -> Vec<String> {
    (1..=ALTERNATING)
        .map(|i| {
            if i % 2 == 1 {
                format!("out{i}")
            } else {
                format!("err{i}")
            }
        })
        .collect()
}

#[test]
fn stdout_and_stderr_keep_the_order_the_job_wrote_them_in_the_record_and_the_log() {
    let _cgroups = beside_others();
    let env = Env::new().config(&format!(
        "[jobs.talk]\nschedule = \"@every 1s\"\nshell = '''[ -e {{dir}}/first ] && exit 0; echo $BGSCHED_RUN_ID > {{dir}}/first; i=1; while [ $i -le {ALTERNATING} ]; do if [ $((i % 2)) = 1 ]; then echo out$i; else echo err$i >&2; fi; i=$((i + 1)); done'''\n"
    ));
    let mut run = env.spawn_run_with("a", &["--log-format", "json"]);
    let rec = wait_for_record(&env, "talk", "first");
    let run_id = rec["run_id"].as_str().unwrap().to_string();
    let expected = alternating_lines();

    let out = env.cmd(&["history", "--output", &run_id]).run().success();
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(got, expected, "history --output");

    let log = run.log_text();
    let logged: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["run_id"] == run_id.as_str() && v["target"] == "bgsched::job")
        .map(|v| v["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(logged, expected, "the scheduler's log:\n{log}");
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
}

#[test]
fn a_foreground_trigger_keeps_the_order_in_its_record_and_on_its_stdout() {
    let _cgroups = beside_others();
    let env = Env::new().config(&format!(
        "[jobs.talk]\nschedule = \"@yearly\"\nshell = '''i=1; while [ $i -le {ALTERNATING} ]; do if [ $((i % 2)) = 1 ]; then echo out$i; else echo err$i >&2; fi; i=$((i + 1)); done'''\n"
    ));
    let expected = alternating_lines();
    let out = env.cmd(&["trigger", "talk"]).run().success();
    let shown: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(shown, expected, "trigger's stdout");
    let recs = env.records("talk");
    assert_eq!(recs.len(), 1, "{recs:?}");
    let run_id = recs[0]["run_id"].as_str().unwrap().to_string();
    let out = env.cmd(&["history", "--output", &run_id]).run().success();
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(got, expected, "history --output");
}

#[test]
fn the_tail_is_the_last_64_kib_even_of_one_10_mb_line() {
    let _cgroups = beside_others();
    const MARKER: &str = "END-OF-THE-HUGE-LINE-7f3a";
    let env = Env::new().config(&format!(
        "[jobs.huge]\nschedule = \"@yearly\"\nshell = '''echo $BGSCHED_RUN_ID > {{dir}}/first; head -c 10000000 /dev/zero | tr '\\0' x; printf {MARKER}'''\n"
    ));
    env.trigger_detached("huge");
    let rec = wait_for_record(&env, "huge", "first");
    assert_eq!(rec["outcome"], "success", "{rec}");
    let tail = rec["output_tail"].as_str().unwrap();
    let mut expected = "x".repeat(64 * 1024 - MARKER.len());
    expected.push_str(MARKER);
    assert_eq!(tail.len(), 64 * 1024);
    assert!(
        tail == expected,
        "tail ends with {:?}",
        &tail[tail.len().saturating_sub(80)..]
    );
}

/// A job that starts a `setsid` daemon and a double-forked one (the
/// subshell exits at once, so the daemon's parent is gone before the job
/// ends), writes their pids and then ends (or sleeps into its timeout).
/// Only the first run does so; later ones exit at once.
fn escaping_job(end: &str) -> String {
    format!(
        "schedule = \"@yearly\"\nshell = '''[ -e {{dir}}/started ] && exit 0; touch {{dir}}/started; cat /proc/self/cgroup > {{dir}}/cgroup; setsid sh -c 'echo $$ > {{dir}}/setsid.tmp; mv {{dir}}/setsid.tmp {{dir}}/setsid; exec sleep 1000' & ( setsid sh -c 'echo $$ > {{dir}}/double.tmp; mv {{dir}}/double.tmp {{dir}}/double; exec sleep 1000' & ) & while [ ! -e {{dir}}/setsid ] || [ ! -e {{dir}}/double ]; do sleep 0.05; done; echo $BGSCHED_RUN_ID > {{dir}}/first; {end}'''\n"
    )
}

fn escaped_pids(env: &Env) -> Vec<i32> {
    ["setsid", "double"]
        .iter()
        .map(|f| env.lines(f)[0].trim().parse().unwrap())
        .collect()
}

/// The escaped processes are dead once their run is recorded (the
/// supervisor kills them before it writes the final record), and reaped
/// soon after (the supervisor waits for them, so none stays a zombie).
fn assert_gone(rec: &Value, escaped: &[i32]) {
    for pid in escaped {
        assert!(
            !alive(*pid),
            "pid {pid} (left the job's group) outlived the recorded run: {rec}"
        );
    }
    wait_until(PATIENCE, "the escaped processes to be reaped", || {
        escaped
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    });
}

#[test]
fn descendants_that_left_the_group_are_killed_when_the_run_ends() {
    let _cgroups = beside_others();
    let env = Env::new().config(&format!("[jobs.escaper]\n{}", escaping_job("echo done")));
    env.trigger_detached("escaper");
    check_killed_at_run_end(&env);
}

/// Without cgroups the subreaper alone finds and kills them.
#[test]
fn descendants_that_left_the_group_are_killed_without_cgroups_too() {
    let _cgroups = beside_others();
    let env = Env::new().config(&format!("[jobs.escaper]\n{}", escaping_job("echo done")));
    let out = env
        .cmd(&["trigger", "escaper"])
        .env("BGSCHED_CGROUP", "off")
        .run()
        .success();
    assert!(
        out.stderr.contains("containing the job's descendants with a child subreaper (no cgroup: BGSCHED_CGROUP=off)"),
        "{out:?}"
    );
    assert!(!fs::read_to_string(env.path("cgroup"))
        .unwrap()
        .contains("bgsched-run-"));
    check_killed_at_run_end(&env);
}

fn check_killed_at_run_end(env: &Env) {
    let rec = wait_for_record(env, "escaper", "first");
    let escaped = escaped_pids(env);
    let _guard = KillOnDrop(escaped.clone());
    assert_eq!(rec["outcome"], "success", "{rec}");
    assert!(rec["output_tail"].as_str().unwrap().contains("done"));
    assert_gone(&rec, &escaped);
}

#[test]
fn descendants_that_left_the_group_are_killed_on_timeout_under_run() {
    let _cgroups = beside_others();
    let env = Env::new().config(&format!(
        "[jobs.escaper]\ntimeout = \"2s\"\nkill_grace = \"1s\"\n{}",
        escaping_job("sleep 1000").replace("@yearly", "@every 1s")
    ));
    let mut run = env.spawn_run_with("a", &["--log-format", "json"]);
    let rec = wait_for_record(&env, "escaper", "first");
    let escaped = escaped_pids(&env);
    let _guard = KillOnDrop(escaped.clone());
    assert_eq!(rec["outcome"], "timed_out", "{rec}");
    assert_gone(&rec, &escaped);
    // Said at debug level (the tests run with BGSCHED_LOG=debug), and
    // where a cgroup was made, the job ran in it and it is gone now.
    let log = run.log_text();
    assert!(
        log.contains("containing the job's descendants with a child subreaper"),
        "{log}"
    );
    let cgroup = log.lines().find_map(|l| {
        let v: Value = serde_json::from_str(l).ok()?;
        v["cgroup"].as_str().map(str::to_string)
    });
    if let Some(dir) = cgroup {
        let name = dir.rsplit('/').next().unwrap();
        assert!(
            fs::read_to_string(env.path("cgroup"))
                .unwrap()
                .contains(name),
            "{dir}"
        );
        assert!(!std::path::Path::new(&dir).exists(), "{dir} is left behind");
        eprintln!("the run was contained in cgroup {dir}");
    } else {
        assert!(log.contains("(no cgroup: "), "{log}");
    }
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
}

#[test]
fn descendants_that_left_the_group_are_killed_when_run_shuts_down() {
    let _cgroups = beside_others();
    let env = Env::new().config(&format!(
        "[scheduler]\nshutdown_grace = \"1s\"\n\n[jobs.escaper]\nkill_grace = \"1s\"\n{}",
        escaping_job("sleep 1000").replace("@yearly", "@every 1s")
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the daemons to start", || {
        env.path("first").exists()
    });
    let escaped = escaped_pids(&env);
    let _guard = KillOnDrop(escaped.clone());
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    let rec = wait_for_record(&env, "escaper", "first");
    assert_eq!(rec["outcome"], "killed", "{rec}");
    assert_gone(&rec, &escaped);
}

/// A supervisor killed with `kill -9` cannot clean up; the scheduler kills
/// what is left in the run's cgroup (where the machine allows one), so
/// even the processes that left the job's group go.
#[test]
fn descendants_that_left_the_group_go_when_their_supervisor_is_killed() {
    let _cgroups = beside_others();
    let env = Env::new().config(&format!(
        "[jobs.escaper]\n{}",
        escaping_job("sleep 1000").replace("@yearly", "@every 1s")
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the daemons to start", || {
        env.path("first").exists()
    });
    let escaped = escaped_pids(&env);
    let _guard = KillOnDrop(escaped.clone());
    let in_cgroup = fs::read_to_string(env.path("cgroup"))
        .unwrap()
        .contains("bgsched-run-");
    // Orphans are the subreaper's: the setsid daemon's parent is the supervisor.
    let mut supervisor = None;
    wait_until(PATIENCE, "the daemon to be the supervisor's", || {
        supervisor = parent_of(escaped[1]).filter(|p| *p != 1);
        supervisor.is_some_and(|p| parent_of(p) == Some(run.pid()))
    });
    if let Some(p) = Pid::from_raw(supervisor.unwrap()) {
        rustix::process::kill_process(p, Signal::KILL).unwrap();
    }
    if !in_cgroup {
        eprintln!("no cgroup on this machine: only the job's group goes with its supervisor");
        return;
    }
    wait_until(PATIENCE, "the escaped processes to be killed", || {
        escaped.iter().all(|p| !alive(*p))
    });
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    assert!(
        run.log_text()
            .contains("killed what was left in its run's cgroup"),
        "{}",
        run.log_text()
    );
}

/// The scheduler runs the `on_failure` hook of a run it records `lost`
/// itself; cleaning up after that hook must not touch the other runs,
/// which are the scheduler's descendants too.
#[test]
fn the_hook_of_a_lost_run_leaves_the_other_runs_alone() {
    let _cgroups = beside_others();
    let env = Env::new().config(
        "[scheduler]\nshutdown_grace = \"1s\"\n\n[jobs.doomed]\nschedule = \"@every 1s\"\nshell = '[ -e {dir}/doomed ] && exit 0; echo $$ > {dir}/doomed; sleep 600'\n\
         on_failure = [\"/bin/sh\", \"-c\", 'echo $BGSCHED_OUTCOME >> {dir}/hook']\n\n\
         [jobs.bystander]\nschedule = \"@every 1s\"\nshell = '[ -e {dir}/bystander ] && exit 0; echo $$ > {dir}/bystander; sleep 600'\n",
    );
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "both jobs to run", || {
        env.path("doomed").exists() && env.path("bystander").exists()
    });
    let doomed: i32 = env.lines("doomed")[0].parse().unwrap();
    let bystander: i32 = env.lines("bystander")[0].parse().unwrap();
    let _guard = KillOnDrop(vec![doomed, bystander]);
    let supervisor = parent_of(doomed).expect("the doomed job's supervisor");
    rustix::process::kill_process(Pid::from_raw(supervisor).unwrap(), Signal::KILL).unwrap();
    wait_until(PATIENCE, "the hook of the lost run", || {
        env.lines("hook").iter().any(|l| l == "lost")
    });
    // The hook's clean-up is over once the scheduler logs the hook finished.
    wait_until(PATIENCE, "the hook to be logged finished", || {
        run.log_text().contains("on_failure hook finished")
    });
    assert!(
        alive(bystander),
        "the other job's run was killed along with a hook"
    );
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
}

/// This process's cgroup v2 directory, if cgroup2 is mounted.
fn own_cgroup_dir() -> Option<std::path::PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mountpoint = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then_some(())?;
        left.split_whitespace().nth(4).map(str::to_string)
    })?;
    Some(std::path::Path::new(&mountpoint).join(rel.trim_start_matches('/')))
}

/// Every run started here sweeps the stale run cgroups below this test
/// process's cgroup, which all its tests share: a sweep test runs alone,
/// or another test's run would sweep its stale cgroup first (and the
/// scheduler's test then stop a scheduler still starting up).
static CGROUPS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    CGROUPS.write().unwrap_or_else(|e| e.into_inner())
}

fn beside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    CGROUPS.read().unwrap_or_else(|e| e.into_inner())
}

/// A stale and a young run cgroup, as left behind by a supervisor and a
/// scheduler both killed before they could remove them; `None` where
/// cgroups cannot be made here.
fn left_behind_cgroups(tag: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let Some(parent) = own_cgroup_dir() else {
        eprintln!("no cgroup v2 here: nothing to sweep");
        return None;
    };
    let stale = parent.join(format!("bgsched-run-left-{tag}-{}-1", std::process::id()));
    let young = parent.join(format!("bgsched-run-young-{tag}-{}-1", std::process::id()));
    if fs::create_dir(&stale).is_err() {
        eprintln!("cannot create cgroups here: nothing to sweep");
        return None;
    }
    fs::create_dir(&young).unwrap();
    let old = std::process::Command::new("touch")
        .args(["-d", "1 hour ago"])
        .arg(&stale)
        .status()
        .unwrap();
    assert!(old.success());
    Some((stale, young))
}

/// A run cgroup left behind is removed by the next `bgsched trigger` once
/// it is empty and over a minute old; a young one is left alone.
#[test]
fn run_cgroups_left_behind_are_swept_by_the_next_trigger() {
    let _cgroups = alone();
    let Some((stale, young)) = left_behind_cgroups("trigger") else {
        return;
    };
    let env = Env::new().config(&format!("[jobs.escaper]\n{}", escaping_job("echo done")));
    env.trigger_detached("escaper");
    wait_for_record(&env, "escaper", "first");
    let (stale_left, young_left) = (stale.exists(), young.exists());
    let _ = fs::remove_dir(&stale);
    let _ = fs::remove_dir(&young);
    assert!(!stale_left, "{} was not swept", stale.display());
    assert!(young_left, "{} was swept though young", young.display());
}

/// The scheduler sweeps them too, when it readies supervisors for a tick
/// (at most once a minute); the supervisors themselves never list the run
/// cgroups.
#[test]
fn run_cgroups_left_behind_are_swept_by_the_scheduler() {
    let _cgroups = alone();
    let Some((stale, young)) = left_behind_cgroups("scheduler") else {
        return;
    };
    let env = Env::new().config("[jobs.ticker]\nschedule = \"@every 1s\"\ncommand = [\"true\"]\n");
    let mut run = env.spawn_run("a");
    let deadline = std::time::Instant::now() + PATIENCE;
    while stale.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (stale_left, young_left) = (stale.exists(), young.exists());
    let _ = fs::remove_dir(&stale);
    let _ = fs::remove_dir(&young);
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    assert!(!stale_left, "{} was not swept", stale.display());
    assert!(young_left, "{} was swept though young", young.display());
}

/// A job asked to stop gets SIGTERM once: many programs take a second one
/// as "stop now, skip the cleanup", which would cut the kill grace short.
/// (The SIGTERM meant for descendants that left the group once reached the
/// group's processes too, and what the job's handler had just started.)
#[test]
fn a_job_asked_to_stop_gets_sigterm_once() {
    let _cgroups = beside_others();
    let env = Env::new().config(
        "[jobs.tidy]\nschedule = \"@yearly\"\ntimeout = \"500ms\"\nkill_grace = \"10s\"\n\
         shell = 'trap \"echo term >> {dir}/terms\" TERM; i=0; while [ $i -lt 30 ]; do sleep 0.05; i=$((i+1)); done; echo done >> {dir}/terms'\n",
    );
    for _ in 0..3 {
        env.cmd(&["trigger", "tidy"]).run();
    }
    assert_eq!(
        env.lines("terms"),
        ["term", "done", "term", "done", "term", "done"]
    );
}
