//! Supervisors started ahead of their tick (`executor::waiting`): a run
//! handed to one is supervised and recorded as any other, even with the
//! scheduler gone; one still waiting ends with the scheduler and starts
//! nothing; a dead one is passed over.

mod common;
use common::*;
use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use std::time::{Duration, Instant};

/// Kills a job's process group (its pid) when dropped.
struct EndGroup(i32);

impl Drop for EndGroup {
    fn drop(&mut self) {
        if let Some(group) = Pid::from_raw(self.0) {
            let _ = kill_process_group(group, Signal::KILL);
        }
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

/// Whether `pid` was started as a supervisor waiting for its run (its
/// environment as it started; the supervisor drops the variable itself).
fn started_waiting(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|b| *b == 0)
                .any(|v| v.starts_with(b"BGSCHED_SUPERVISE_WAIT="))
        })
        .unwrap_or(false)
}

/// A job line of shell that records `<1 if its supervisor was started
/// waiting, else 0> <its pid>` in `runs`.
const RECORD_HOW: &str = "w=$(tr \"\\0\" \"\\n\" < /proc/$PPID/environ | grep -c ^BGSCHED_SUPERVISE_WAIT=); echo \"$w $$\" >> {dir}/runs";

#[test]
fn a_run_handed_to_a_waiting_supervisor_survives_kill_9_of_the_scheduler_and_is_recorded() {
    // The first run through a supervisor that was waiting holds on until
    // released; the others end at once.
    let env = Env::new().config(&format!(
        "[jobs.held]\nschedule = \"@every 1s\"\noverlap = \"skip\"\n\
         shell = '{RECORD_HOW}; if [ $w = 1 ] && [ ! -e {{dir}}/held ]; then echo $$ > {{dir}}/held; \
         while [ ! -e {{dir}}/release ]; do sleep 0.05; done; echo released; fi'\n"
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "a run through a waiting supervisor", || {
        !env.lines("held").is_empty()
    });
    let job_pid: i32 = env.lines("held")[0].parse().unwrap();
    let supervisor = parent_of(job_pid).expect("its supervisor");
    assert!(started_waiting(supervisor), "started ahead of its tick");
    run.kill9();
    std::fs::write(env.path("release"), "").unwrap();
    wait_until(PATIENCE, "the run recorded by its own supervisor", || {
        env.records("held").iter().any(|r| {
            r["pid"] == job_pid && r["outcome"] == "success" && r["supervisor_pid"] == supervisor
        })
    });
    let record = env
        .records("held")
        .into_iter()
        .find(|r| r["pid"] == job_pid)
        .unwrap();
    assert!(
        record["output_tail"].as_str().unwrap().contains("released"),
        "{record}"
    );
}

#[test]
fn a_waiting_supervisor_ends_with_the_scheduler_killed_and_starts_no_job() {
    // One long run keeps every later tick skipped, so the supervisor
    // started for each of them is left waiting.
    let env = Env::new().config(&format!(
        "[jobs.long]\nschedule = \"@every 1s\"\noverlap = \"skip\"\n\
         shell = '{RECORD_HOW}; sleep 600'\n"
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "the long run", || !env.lines("runs").is_empty());
    let job_pid: i32 = env.lines("runs")[0]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let supervisor = parent_of(job_pid).unwrap();
    let mut waiting = Vec::new();
    wait_until(PATIENCE, "a supervisor left waiting", || {
        waiting = children_of(run.pid())
            .into_iter()
            .filter(|p| *p != supervisor && started_waiting(*p))
            .collect();
        !waiting.is_empty()
    });
    run.kill9();
    wait_until(PATIENCE, "the waiting supervisors to end", || {
        waiting.iter().all(|p| !alive(*p))
    });
    assert_eq!(
        env.lines("runs").len(),
        1,
        "no job started: {:?}",
        env.lines("runs")
    );
    assert!(alive(supervisor) && alive(job_pid), "the run goes on");
    let _ = kill_process(Pid::from_raw(supervisor).unwrap(), Signal::TERM);
    wait_until(PATIENCE, "the run to end", || !alive(job_pid));
}

#[test]
fn a_waiting_supervisor_that_died_is_passed_over_and_the_run_starts_anyway() {
    let env = Env::new().config(&format!(
        "[jobs.beat]\nschedule = \"@every 1s\"\nshell = '{RECORD_HOW}'\n"
    ));
    let run = env.spawn_run("a");
    wait_until(PATIENCE, "a first run", || !env.lines("runs").is_empty());
    // For a while, kill every supervisor waiting for the next tick (they
    // start 250 ms ahead, and ticks fall on whole seconds): the ticks
    // still run, through supervisors started at the tick. Never close to
    // a tick, where one may just have been handed its run.
    let before = env.lines("runs").len();
    let mut killed = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) || env.lines("runs").len() < before + 2 {
        assert!(
            start.elapsed() < PATIENCE,
            "runs went on: {:?}",
            env.lines("runs")
        );
        let fraction = chrono::Utc::now().timestamp_subsec_millis();
        if (780..950).contains(&fraction) {
            for p in children_of(run.pid()) {
                if started_waiting(p)
                    && children_of(p).is_empty()
                    && kill_process(Pid::from_raw(p).unwrap(), Signal::KILL).is_ok()
                {
                    killed += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(killed > 0, "some supervisor was waiting");
    let runs = env.lines("runs");
    assert!(
        runs[before..].iter().any(|l| l.starts_with("0 ")),
        "a run started the slower way: {runs:?}"
    );
    wait_until(PATIENCE, "every run recorded", || {
        env.records("beat")
            .iter()
            .all(|r| r["outcome"] == "success")
            && env.records("beat").len() >= runs.len()
    });
}

#[test]
fn claims_due_together_with_one_job_still_running_skip_that_job_only() {
    // Twenty jobs due on every tick, one of them still running.
    let mut toml = String::from(
        "[jobs.long]\nschedule = \"@every 1s\"\noverlap = \"skip\"\nshell = 'echo $$ >> {dir}/long; sleep 600'\n",
    );
    for i in 0..20 {
        toml.push_str(&format!(
            "[jobs.j{i:02}]\nschedule = \"@every 1s\"\noverlap = \"skip\"\n\
             shell = 'echo \"$BGSCHED_SCHEDULED_AT\" >> {{dir}}/j{i:02}'\n"
        ));
    }
    let env = Env::new().config(&toml);
    let _run = env.spawn_run("a");
    wait_until(PATIENCE, "the long run", || !env.lines("long").is_empty());
    // Its supervisor outlives the killed scheduler, as every run does: the
    // job goes with the test.
    let _long = EndGroup(env.lines("long")[0].trim().parse().unwrap());
    // Three ticks after it started: every other job fired each of them.
    wait_until(PATIENCE, "three skips of the long job", || {
        env.records("long")
            .iter()
            .filter(|r| r["outcome"] == "skipped")
            .count()
            >= 3
    });
    let skipped: Vec<String> = env
        .records("long")
        .iter()
        .filter(|r| r["outcome"] == "skipped")
        .map(|r| r["tick"].as_str().unwrap().to_string())
        .collect();
    for i in 0..20 {
        let job = format!("j{i:02}");
        wait_until(
            PATIENCE,
            &format!("{job} recorded for the skipped ticks"),
            || {
                let ran: Vec<String> = env
                    .records(&job)
                    .iter()
                    .filter(|r| r["outcome"] == "success")
                    .map(|r| r["tick"].as_str().unwrap().to_string())
                    .collect();
                skipped.iter().all(|t| ran.contains(t))
            },
        );
        assert!(
            env.records(&job).iter().all(|r| r["outcome"] == "success"),
            "{job}: {:?}",
            env.records(&job)
        );
    }
    assert_eq!(env.lines("long").len(), 1, "the long job started once");
    // Each tick is in the claims journal once per job.
    let journal = std::fs::read_to_string(env.state_dir().join("claims.journal")).unwrap();
    for tick in &skipped {
        let at = chrono::DateTime::parse_from_rfc3339(tick)
            .unwrap()
            .to_rfc3339();
        let lines = journal.lines().filter(|l| l.starts_with(&at)).count();
        assert_eq!(lines, 21, "{tick}:\n{journal}");
    }
}

#[test]
fn a_tick_in_the_claims_journal_is_not_fired_again_after_its_last_tick_was_lost() {
    // As a power loss right after a claim can leave it: the journal holds
    // the tick, the job's last_tick still the one before.
    use chrono::{DurationRound, Utc};
    let hour = Utc::now()
        .duration_trunc(chrono::Duration::hours(1))
        .unwrap();
    let env = Env::new().config(
        "[jobs.hourly]\nschedule = \"0 * * * *\"\ncatchup = \"2h\"\nshell = 'echo ran >> {dir}/hourly'\n\
         [jobs.beat]\nschedule = \"@every 1s\"\nshell = 'echo beat >> {dir}/beat'\n",
    );
    let dir = env.state_dir().join("jobs").join("hourly");
    std::fs::create_dir_all(&dir).unwrap();
    let before = hour - chrono::Duration::hours(1);
    std::fs::write(dir.join("last_tick"), before.to_rfc3339()).unwrap();
    std::fs::write(
        env.state_dir().join("claims.journal"),
        format!(
            "{} \"hourly\"\n{} \"hou",
            hour.to_rfc3339(),
            hour.to_rfc3339()
        ),
    )
    .unwrap();
    let _run = env.spawn_run("a");
    // A catch-up would fire at once, long before the second beat.
    wait_until(PATIENCE, "two beats", || env.lines("beat").len() >= 2);
    assert!(
        env.lines("hourly").is_empty(),
        "the claimed tick fired again"
    );
    assert!(
        env.records("hourly").is_empty(),
        "{:?}",
        env.records("hourly")
    );
    let last = std::fs::read_to_string(dir.join("last_tick")).unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(last.trim()).unwrap(),
        hour
    );
}

#[test]
fn a_job_handed_to_a_waiting_supervisor_is_born_in_its_runs_cgroup_and_the_supervisor_is_not() {
    // Where run cgroups can be made, a waiting supervisor enters its
    // run's cgroup ahead of the tick (moving in is slow) and moves back
    // out once its job runs.
    let env = Env::new().config(&format!(
        "[jobs.where]\nschedule = \"@every 1s\"\noverlap = \"skip\"\n\
         shell = '{RECORD_HOW}; cat /proc/self/cgroup > {{dir}}/job.$$; sleep 0.5; \
         cat /proc/$PPID/cgroup > {{dir}}/supervisor.$$; echo $PPID > {{dir}}/ppid.$$; mv {{dir}}/job.$$ {{dir}}/done.$$'\n"
    ));
    let _run = env.spawn_run("a");
    let mut found = None;
    wait_until(PATIENCE, "a run through a waiting supervisor", || {
        found = env.lines("runs").iter().find_map(|l| {
            let (w, pid) = l.split_once(' ')?;
            (w == "1" && env.path(&format!("done.{pid}")).exists()).then(|| pid.to_string())
        });
        found.is_some()
    });
    let pid = found.unwrap();
    let job = std::fs::read_to_string(env.path(&format!("done.{pid}"))).unwrap();
    let supervisor = std::fs::read_to_string(env.path(&format!("supervisor.{pid}"))).unwrap();
    let ppid = std::fs::read_to_string(env.path(&format!("ppid.{pid}"))).unwrap();
    let v2 = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("")
            .to_string()
    };
    if !v2(&job).contains("bgsched-run-") {
        eprintln!("no run cgroups on this machine: {job}");
        return;
    }
    assert!(
        v2(&job).ends_with(&format!("/bgsched-run-sup{}-1", ppid.trim())),
        "the job is in its supervisor's run cgroup: {job}"
    );
    assert!(
        !v2(&supervisor).contains("bgsched-run-"),
        "the supervisor moved back out: {supervisor}"
    );
    wait_until(PATIENCE, "the run recorded", || {
        env.records("where")
            .iter()
            .any(|r| r["pid"] == pid.parse::<i64>().unwrap() && r["outcome"] == "success")
    });
}

#[test]
fn a_supervisor_killed_before_it_recorded_anything_leaves_its_run_recorded_lost() {
    // Waiting out its jitter, a supervisor has written no record yet; the
    // scheduler that started it records the run lost (README: a tick is
    // never silently lost).
    let env = Env::new().config(
        "[jobs.late]\nschedule = \"@every 1s\"\njitter = \"1h\"\nshell = 'echo ran >> {dir}/ran'\n",
    );
    let run = env.spawn_run("a");
    let handed_over = |p: &i32| {
        std::fs::read_link(format!("/proc/{p}/fd/0"))
            .is_ok_and(|t| t == std::path::Path::new("/dev/null"))
    };
    let mut supervisor = None;
    wait_until(PATIENCE, "a supervisor waiting out its jitter", || {
        supervisor = children_of(run.pid()).into_iter().find(handed_over);
        supervisor.is_some()
    });
    assert!(env.records("late").is_empty(), "{:?}", env.records("late"));
    kill_process(Pid::from_raw(supervisor.unwrap()).unwrap(), Signal::KILL).unwrap();
    wait_until(PATIENCE, "the run recorded lost", || {
        env.records("late").iter().any(|r| {
            r["outcome"] == "lost"
                && r["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("before it recorded the run"))
        })
    });
    assert!(env.lines("ran").is_empty());
}
