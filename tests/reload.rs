//! Live reload of `bgsched run`: SIGHUP and `--watch-config` apply a new
//! config (added, removed and rescheduled jobs), reject an invalid one, and
//! in a cluster every replica announces the config it runs.

mod common;

use common::etcd::Etcd;
use common::*;
use rustix::process::Signal;
use std::collections::HashSet;
use std::fs;

/// A job that appends `<label> <tick> <trigger>` to `{dir}/<file>` and
/// then sleeps `secs`.
fn job(name: &str, schedule: &str, label: &str, file: &str, secs: u32) -> String {
    format!(
        "[jobs.{name}]\nschedule = \"{schedule}\"\nshell = 'echo \"{label} $BGSCHED_SCHEDULED_AT $BGSCHED_TRIGGER\" >> {{dir}}/{file}; sleep {secs}; echo \"end {label}\" >> {{dir}}/{file}'\n"
    )
}

/// Lines of `file` that start with `label `.
fn starts(env: &Env, file: &str, label: &str) -> Vec<String> {
    env.lines(file)
        .into_iter()
        .filter(|l| l.starts_with(&format!("{label} ")))
        .collect()
}

/// How many times the log says a reload was applied.
fn reloads(run: &Scheduler) -> usize {
    run.log_text().matches("config reloaded").count()
}

/// Wait until `label` has started `n` more times than now.
fn wait_more_starts(env: &Env, file: &str, label: &str, n: usize) {
    let before = starts(env, file, label).len();
    wait_until(PATIENCE, &format!("{n} more runs of {label}"), || {
        starts(env, file, label).len() >= before + n
    });
}

#[test]
fn sighup_adds_a_job_and_it_starts_firing() {
    let env = Env::new().config(&job("a", "@every 1s", "a", "ledger", 0));
    let run = env.spawn_run("r");
    wait_more_starts(&env, "ledger", "a", 1);
    env.write(
        "jobs.toml",
        &(job("a", "@every 1s", "a", "ledger", 0) + &job("b", "@every 1s", "b", "ledger", 0)),
    );
    // Without a reload the new file is not looked at.
    wait_more_starts(&env, "ledger", "a", 2);
    assert!(
        starts(&env, "ledger", "b").is_empty(),
        "b fired before SIGHUP"
    );
    run.signal(Signal::HUP);
    wait_more_starts(&env, "ledger", "b", 2);
    let log = run.log_text();
    assert!(log.contains("job added"), "{log}");
    // Reloading an unchanged file changes nothing.
    run.signal(Signal::HUP);
    wait_until(PATIENCE, "the unchanged reload", || {
        run.log_text().contains("file unchanged")
    });
    assert_eq!(reloads(&run), 1);
}

#[test]
fn a_removed_job_stops_firing_and_its_running_run_finishes() {
    let quick = job("quick", "@every 1s", "quick", "ledger", 0);
    let env = Env::new().config(&(quick.clone() + &job("slow", "@every 1s", "slow", "ledger", 3)));
    let run = env.spawn_run("r");
    let ended = || {
        env.lines("ledger")
            .iter()
            .filter(|l| *l == "end slow")
            .count()
    };
    wait_until(PATIENCE, "a run of slow that is still going", || {
        starts(&env, "ledger", "slow").len() > ended()
    });
    env.write("jobs.toml", &quick);
    run.signal(Signal::HUP);
    wait_until(PATIENCE, "the reload", || reloads(&run) == 1);
    let slow_runs = starts(&env, "ledger", "slow").len();
    wait_until(PATIENCE, "the running slow run to finish", || {
        ended() == slow_runs
    });
    wait_until(PATIENCE, "its record", || {
        env.records("slow")
            .iter()
            .filter(|r| r["outcome"] == "success")
            .count()
            == slow_runs
    });
    // Enough time for several more ticks of slow.
    wait_more_starts(&env, "ledger", "quick", 4);
    assert_eq!(
        starts(&env, "ledger", "slow").len(),
        slow_runs,
        "slow fired after it was removed"
    );
    assert!(run.log_text().contains("job removed"));
}

#[test]
fn a_changed_schedule_and_command_apply_from_the_next_tick() {
    let env = Env::new().config(&job("j", "@every 1s", "old", "ledger", 0));
    let run = env.spawn_run("r");
    wait_more_starts(&env, "ledger", "old", 2);
    env.write("jobs.toml", &job("j", "@every 3s", "new", "ledger", 0));
    run.signal(Signal::HUP);
    wait_more_starts(&env, "ledger", "new", 3);
    let lines: Vec<String> = env
        .lines("ledger")
        .into_iter()
        .filter(|l| !l.starts_with("end"))
        .collect();
    let first_new = lines.iter().position(|l| l.starts_with("new ")).unwrap();
    assert!(
        lines[first_new..].iter().all(|l| l.starts_with("new ")),
        "an old run after the new config applied: {lines:#?}"
    );
    let tick = |l: &String| {
        chrono::DateTime::parse_from_rfc3339(l.split(' ').nth(1).unwrap())
            .unwrap()
            .timestamp()
    };
    let mut seen = HashSet::new();
    for l in &lines {
        assert!(seen.insert(tick(l)), "tick fired twice: {lines:#?}");
    }
    let new: Vec<i64> = lines[first_new..].iter().map(tick).collect();
    for (l, t) in lines[first_new..].iter().zip(&new) {
        assert_eq!(t % 3, 0, "not a tick of @every 3s: {lines:#?}");
        assert!(l.ends_with(" schedule"), "caught up after a reload: {l}");
    }
    for pair in new.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            3,
            "ticks of the new schedule skipped: {lines:#?}"
        );
    }
    // The first new tick is the first after the reload: no gap longer than
    // the new interval plus the old one.
    assert!(new[0] - tick(&lines[first_new - 1]) <= 4, "{lines:#?}");
}

#[test]
fn an_invalid_config_is_rejected_with_located_errors_and_the_old_one_keeps_firing() {
    let good = job("a", "@every 1s", "a", "ledger", 0);
    let env = Env::new().config(&good);
    let run = env.spawn_run("r");
    wait_more_starts(&env, "ledger", "a", 1);
    env.write(
        "jobs.toml",
        &(good.clone()
            + "[jobs.b]\nschedule = \"61 * * * *\"\ncommand = [\"true\"]\ntimout = \"1s\"\n"),
    );
    let check = env.cmd(&["check"]).run().code(78);
    let errors: Vec<&str> = check
        .stderr
        .lines()
        .filter(|l| l.contains("jobs.toml:"))
        .collect();
    assert_eq!(errors.len(), 2, "{}", check.stderr);
    run.signal(Signal::HUP);
    wait_until(PATIENCE, "the rejection", || {
        run.log_text().contains("config reload rejected")
    });
    let log = run.log_text();
    for e in &errors {
        assert!(log.contains(e), "the log lacks {e:?}:\n{log}");
    }
    wait_more_starts(&env, "ledger", "a", 3);
    assert_eq!(reloads(&run), 0);
    // A valid file after the invalid one is taken.
    env.write(
        "jobs.toml",
        &(good + &job("b", "@every 1s", "b", "ledger", 0)),
    );
    run.signal(Signal::HUP);
    wait_more_starts(&env, "ledger", "b", 1);
}

#[test]
fn watch_config_picks_up_a_replaced_file_without_a_signal() {
    let env = Env::new().config(&job("a", "@every 1s", "a", "ledger", 0));
    let run = env.spawn_run_with("r", &["--watch-config"]);
    wait_more_starts(&env, "ledger", "a", 1);
    // As editors save: write a new file and rename it over the old one.
    let tmp = env.write(
        ".jobs.toml.swp",
        &(job("a", "@every 1s", "a", "ledger", 0) + &job("b", "@every 1s", "b", "ledger", 0)),
    );
    fs::rename(tmp, env.path("jobs.toml")).unwrap();
    wait_more_starts(&env, "ledger", "b", 2);
    assert_eq!(reloads(&run), 1, "{}", run.log_text());
}

#[test]
fn watch_config_follows_a_configmap_symlink_swap() {
    // A Kubernetes ConfigMap volume: jobs.toml -> ..data/jobs.toml, and
    // ..data -> a versioned directory that an update swaps atomically.
    let env = Env::new();
    let version = |name: &str, text: &str| {
        fs::create_dir(env.path(name)).unwrap();
        env.write(&format!("{name}/jobs.toml"), text);
    };
    version("..v1", &job("a", "@every 1s", "a", "ledger", 0));
    std::os::unix::fs::symlink("..v1", env.path("..data")).unwrap();
    std::os::unix::fs::symlink("..data/jobs.toml", env.path("jobs.toml")).unwrap();
    let run = env.spawn_run_with("r", &["--watch-config"]);
    wait_more_starts(&env, "ledger", "a", 1);
    version("..v2", &job("b", "@every 1s", "b", "ledger", 0));
    std::os::unix::fs::symlink("..v2", env.path("..data_tmp")).unwrap();
    fs::rename(env.path("..data_tmp"), env.path("..data")).unwrap();
    fs::remove_dir_all(env.path("..v1")).unwrap();
    wait_more_starts(&env, "ledger", "b", 2);
    assert!(run.log_text().contains("job removed"), "{}", run.log_text());
    let a_runs = starts(&env, "ledger", "a").len();
    wait_more_starts(&env, "ledger", "b", 2);
    assert_eq!(starts(&env, "ledger", "a").len(), a_runs, "a still fires");
}

#[test]
fn metrics_and_status_follow_the_config_generation() {
    let good = job("a", "@every 1s", "a", "ledger", 0);
    let env = Env::new().config(&good);
    let run = env.spawn_run_with("r", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    let series = |name: &str| {
        let text = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        sample(&text, name)
    };
    let generation = "bgsched_config_generation";
    let ok = "bgsched_config_last_reload_success";
    assert_eq!((series(generation), series(ok)), (1.0, 1.0));
    env.write("jobs.toml", "[jobs.a]\nschedule = \"@every\"\n");
    run.signal(Signal::HUP);
    wait_until(PATIENCE, "a failed reload in the metrics", || {
        series(ok) == 0.0
    });
    assert_eq!(series(generation), 1.0);
    env.write(
        "jobs.toml",
        &(good + &job("b", "@every 1s", "b", "ledger", 0)),
    );
    run.signal(Signal::HUP);
    wait_until(PATIENCE, "generation 2", || {
        series(generation) == 2.0 && series(ok) == 1.0
    });
    let (_, body) = http_get(port, "/status").expect("/status");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let list = env.list_json();
    assert_eq!(status["config_hash"], list["config_hash"], "{status}");
    let jobs: Vec<&str> = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(jobs, ["a", "b"], "/status shows the reloaded jobs");
}

/// A cluster config on `etcd` with jobs that leave no trace, so that two
/// scratch directories can hold byte-identical files.
fn cluster_config(etcd: &Etcd, jobs: &str) -> String {
    format!(
        "[cluster]\netcd = [\"{}\"]\nprefix = \"/reload\"\nlease_ttl = \"2s\"\n\n{jobs}",
        etcd.endpoint()
    )
}

fn member_hashes(env: &Env) -> Vec<(String, String)> {
    let list = env.list_json();
    let mut members: Vec<(String, String)> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["instance"].as_str().unwrap().to_string(),
                m["config_hash"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    members.sort();
    members
}

#[test]
fn list_flags_replicas_that_run_different_configs_until_they_agree() {
    let etcd = Etcd::start();
    let one = "[jobs.one]\nschedule = \"@every 1s\"\ncommand = [\"true\"]\n";
    let two = "[jobs.two]\nschedule = \"@every 1s\"\ncommand = [\"true\"]\n";
    let env_a = Env::new().config(&cluster_config(&etcd, one));
    let env_b = Env::new().config(&cluster_config(&etcd, &format!("{one}{two}")));
    let a = env_a.spawn_run("a");
    let b = env_b.spawn_run("b");
    wait_until(PATIENCE, "two members with config hashes", || {
        let m = member_hashes(&env_a);
        m.len() == 2 && m.iter().all(|(_, h)| h.len() == 12)
    });
    let list = env_a.list_json();
    assert_eq!(list["configs_differ"], true, "{list}");
    let hashes = member_hashes(&env_a);
    assert_ne!(hashes[0].1, hashes[1].1);
    assert_eq!(
        hashes[0].1, list["config_hash"],
        "a announces the hash of its file"
    );
    let text = env_a.cmd(&["list"]).run().success();
    assert!(
        text.stdout
            .contains("warning: replicas run different configs"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains(&hashes[1].1), "{}", text.stdout);
    // b reloads the same file as a: the replicas agree again.
    env_b.write("jobs.toml", &cluster_config(&etcd, one));
    b.signal(Signal::HUP);
    wait_until(PATIENCE, "the same hash on both members", || {
        let m = member_hashes(&env_a);
        m.len() == 2 && m[0].1 == m[1].1
    });
    let list = env_a.list_json();
    assert_eq!(list["configs_differ"], false, "{list}");
    let text = env_a.cmd(&["list"]).run().success();
    assert!(!text.stdout.contains("warning"), "{}", text.stdout);
    // Both reload a file with a new job: whichever leads fires it, and
    // announces the hash it fires from.
    let ledger = env_a.path("ledger").display().to_string();
    let three = format!(
        "[jobs.three]\nschedule = \"@every 1s\"\nshell = 'echo \"three $BGSCHED_INSTANCE\" >> {ledger}'\n"
    );
    let text = cluster_config(&etcd, &format!("{one}{three}"));
    env_a.write("jobs.toml", &text);
    env_b.write("jobs.toml", &text);
    a.signal(Signal::HUP);
    b.signal(Signal::HUP);
    wait_until(PATIENCE, "runs of the added job", || {
        starts(&env_a, "ledger", "three").len() >= 2
    });
    let list = env_a.list_json();
    let leader = list["leader"]["instance"].as_str().unwrap().to_string();
    let leader_hash = member_hashes(&env_a)
        .into_iter()
        .find(|(i, _)| *i == leader)
        .unwrap()
        .1;
    assert_eq!(leader_hash, list["config_hash"], "{list}");
    assert!(starts(&env_a, "ledger", "three")
        .iter()
        .all(|l| l.ends_with(&format!(" {leader}"))));
}
