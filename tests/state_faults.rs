//! The standalone state directory under bad conditions: corrupt or
//! misplaced state files, a garbage term file, a full disk, a directory the
//! scheduler may not write, and a standby asked to stop.

mod common;

use common::*;
use rustix::process::Signal;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A run record cut off half-way, as a crash of the filesystem leaves one.
const TORN: &str = "{\n  \"run_id\": \"0190c5a8-0000-7000-8000-000000000001\",\n  \"job\": \"ti";

fn history_json(env: &Env, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["history", "--json"];
    all.extend_from_slice(args);
    let out = env.cmd(&all).run().success();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("history --json is not JSON ({e}): {}", out.stdout))
}

fn unreadable(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|r| r["outcome"] == "unreadable")
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics").expect("metrics answer").1
}

#[test]
fn a_corrupt_run_record_is_set_aside_and_everything_else_goes_on() {
    let env = Env::new().config(&format!(
        "[jobs.tick]\nschedule = \"@every 1s\"\nshell = '{}'\n\n[jobs.other]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n",
        ledger_line("ran", "ledger")
    ));
    env.cmd(&["trigger", "other"]).run().success();
    let runs = env.state_dir().join("jobs/tick/runs");
    fs::create_dir_all(&runs).unwrap();
    let torn = runs.join("0190c5a8-0000-7000-8000-000000000001.json");
    let garbage = runs.join("0190c5a8-0000-7000-8000-000000000002.json");
    let dir = runs.join("0190c5a8-0000-7000-8000-000000000003.json");
    fs::write(&torn, TORN).unwrap();
    fs::write(&garbage, "\u{0}\u{1}not json at all").unwrap();
    fs::create_dir(&dir).unwrap();
    // Well-formed, but not a record (a newer bgsched's?): shown, never moved.
    let alien = runs.join("0190c5a8-0000-7000-8000-000000000004.json");
    fs::write(&alien, "{\"from\": \"the future\"}").unwrap();

    // Read-only commands show the bad entries, hide nothing, move nothing.
    let list = env.list_json();
    let tick = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "tick")
        .unwrap()
        .clone();
    assert_eq!(tick["unreadable"].as_array().unwrap().len(), 4, "{list:#}");
    let other = env.job_view("other");
    assert_eq!(other["last_run"]["outcome"], "success", "{other:#}");
    let table = env.cmd(&["list"]).run().success();
    assert!(
        table.stdout.contains("4 unreadable state files"),
        "{table:?}"
    );
    let all = history_json(&env, &[]);
    let bad = unreadable(&all);
    assert_eq!(bad.len(), 4, "{all:#?}");
    for path in [&torn, &garbage, &dir] {
        assert!(
            bad.iter()
                .any(|r| r.contains(&format!("corrupt state file {}", path.display()))),
            "{path:?} not shown: {bad:#?}"
        );
        assert!(path.exists(), "a read-only command moved {path:?}");
    }
    assert!(
        all.iter()
            .any(|r| r["job"] == "other" && r["outcome"] == "success"),
        "{all:#?}"
    );
    let table = env.cmd(&["history"]).run().success();
    assert!(
        table.stdout.contains("unreadable (corrupt state file"),
        "{table:?}"
    );

    // The scheduler sets each aside once, logs it, counts it, and fires.
    let run = env.spawn_run_with("a", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    wait_until(
        PATIENCE,
        "the job to fire despite its corrupt records",
        || env.lines("ledger").len() >= 2,
    );
    for path in [&torn, &garbage, &dir] {
        assert!(!path.exists(), "{path:?} still in place");
        let aside = PathBuf::from(format!("{}.corrupt", path.display()));
        assert!(aside.exists(), "{aside:?} missing");
        let log = run.log_text();
        assert_eq!(
            count(&log, &format!("corrupt state file {}:", path.display())),
            1,
            "one ERROR per file: {log}"
        );
    }
    assert!(run.log_text().contains("ERROR"), "{}", run.log_text());
    assert_eq!(
        sample(&metrics(port), "bgsched_state_files_corrupt_total"),
        3.0
    );
    // Still shown, now with where it went; the good runs are all there.
    let tick = history_json(&env, &["tick"]);
    let bad = unreadable(&tick);
    assert_eq!(bad.len(), 4, "{tick:#?}");
    assert_eq!(
        bad.iter().filter(|r| r.contains("set aside as")).count(),
        3,
        "{bad:#?}"
    );
    assert!(alien.exists(), "a well-formed file was moved");
    assert!(
        bad.iter()
            .any(|r| r.contains("is not a run record this bgsched can read")),
        "{bad:#?}"
    );
    assert!(tick.iter().any(|r| r["outcome"] == "success"), "{tick:#?}");
}

#[test]
fn misplaced_or_garbage_state_files_do_not_stop_the_scheduler() {
    let mut toml = String::new();
    for job in ["a", "b", "c", "d"] {
        toml.push_str(&format!(
            "[jobs.{job}]\nschedule = \"@every 1s\"\nshell = '{}'\n\n",
            ledger_line(job, "ledger")
        ));
    }
    let env = Env::new().config(&toml);
    let jobs = env.state_dir().join("jobs");
    for job in ["a", "b", "c"] {
        fs::create_dir_all(jobs.join(job)).unwrap();
    }
    // a: a file where its runs directory belongs; b: a directory where its
    // last tick belongs; c: garbage in its last tick.
    fs::write(jobs.join("a/runs"), "not a directory").unwrap();
    fs::create_dir(jobs.join("b/last_tick")).unwrap();
    fs::write(jobs.join("c/last_tick"), "\u{0}\u{0}garbage").unwrap();
    // d: a file where its whole directory belongs.
    fs::write(jobs.join("d"), "not a directory").unwrap();

    env.list_json();
    for job in ["a", "b", "c"] {
        env.cmd(&["history", job]).run().success();
    }
    let a = history_json(&env, &["a"]);
    assert_eq!(unreadable(&a).len(), 1, "{a:#?}");

    let run = env.spawn_run_with("s", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    wait_until(PATIENCE, "every job to fire", || {
        let lines = env.lines("ledger");
        ["a ", "b ", "c ", "d "]
            .iter()
            .all(|j| lines.iter().filter(|l| l.starts_with(j)).count() >= 2)
    });
    for (job, name) in [
        ("a", "runs"),
        ("b", "last_tick"),
        ("c", "last_tick"),
        ("d", ""),
    ] {
        let path = match name {
            "" => jobs.join(job),
            name => jobs.join(job).join(name),
        };
        assert!(
            PathBuf::from(format!("{}.corrupt", path.display())).exists(),
            "{path:?} not set aside"
        );
        assert_eq!(
            count(
                &run.log_text(),
                &format!("corrupt state file {}:", path.display())
            ),
            1,
            "{}",
            run.log_text()
        );
    }
    assert!(jobs.join("a/runs").is_dir());
    assert_eq!(
        sample(&metrics(port), "bgsched_state_files_corrupt_total"),
        4.0
    );
    wait_until(PATIENCE, "a's runs to be recorded again", || {
        history_json(&env, &["a"])
            .iter()
            .any(|r| r["outcome"] == "success")
    });
    for job in ["a", "b", "c", "d"] {
        let entries = history_json(&env, &[job]);
        assert_eq!(unreadable(&entries).len(), 1, "{job}: {entries:#?}");
    }
}

#[test]
fn a_corrupt_last_tick_is_shown_by_list_and_history_before_any_run_in_the_words_of_the_log() {
    let mut toml = String::new();
    for job in ["d", "e"] {
        toml.push_str(&format!(
            "[jobs.{job}]\nschedule = \"@every 1s\"\nshell = '{}'\n\n",
            ledger_line(job, "ledger")
        ));
    }
    let env = Env::new().config(&toml);
    let jobs = env.state_dir().join("jobs");
    fs::create_dir_all(jobs.join("d/last_tick")).unwrap();
    fs::create_dir_all(jobs.join("e")).unwrap();
    fs::write(jobs.join("e/last_tick"), "garbage!!").unwrap();

    // Read-only: shown where they are, never renamed.
    let list = env.cmd(&["list"]).run().success();
    for job in ["d", "e"] {
        let row = list
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{job} ")))
            .unwrap_or_else(|| panic!("no row for {job}: {list:?}"));
        assert!(row.contains("1 unreadable state file"), "{job}: {list:?}");
    }
    let entries = history_json(&env, &["-n", "30"]);
    let before = unreadable(&entries);
    assert_eq!(before.len(), 2, "{entries:#?}");
    for job in ["d", "e"] {
        let path = jobs.join(job).join("last_tick");
        let text = format!("corrupt state file {}:", path.display());
        assert!(
            before.iter().any(|r| r.starts_with(&text)),
            "{job}: {before:#?}"
        );
        assert!(path.exists() && !jobs.join(job).join("last_tick.corrupt").exists());
    }
    let table = env.cmd(&["history", "-n", "30"]).run().success();
    assert_eq!(
        count(&table.stdout, "unreadable (corrupt state file"),
        2,
        "{table:?}"
    );

    // The scheduler sets them aside; the log and history then say the same.
    let mut run = env.spawn_run("s");
    wait_until(PATIENCE, "both jobs to fire", || {
        let lines = env.lines("ledger");
        ["d ", "e "]
            .iter()
            .all(|j| lines.iter().any(|l| l.starts_with(j)))
    });
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    let log = run.log_text();
    let after = unreadable(&history_json(&env, &["-n", "30"]));
    assert_eq!(after.len(), 2, "{after:#?}");
    for (job, reason) in [("d", "Is a directory"), ("e", "not an RFC 3339 instant")] {
        let text = after
            .iter()
            .find(|r| r.contains(&format!("/{job}/last_tick:")))
            .unwrap_or_else(|| panic!("{job}: {after:#?}"));
        assert!(text.contains(reason), "{text}");
        assert!(
            log.contains(text.as_str()),
            "history says {text:?}, the log:\n{log}"
        );
        assert!(
            before.iter().any(|b| text.starts_with(b.as_str())),
            "{before:#?} / {text}"
        );
    }
}

#[test]
fn a_corrupt_term_or_leader_file_is_shown_by_list_before_any_run_in_the_words_of_the_log() {
    let env = Env::new().config(&format!(
        "[jobs.a]\nschedule = \"@every 1s\"\nshell = '{}'\n",
        ledger_line("a", "ledger")
    ));
    let root = env.state_dir();
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("term"), "garbage!!").unwrap();
    fs::write(root.join("leader.json"), "{\"instance\": ").unwrap();
    let warnings = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.strip_prefix("warning: "))
            .map(str::to_string)
            .collect()
    };

    let before = warnings(&env.cmd(&["list"]).run().success().stdout);
    assert_eq!(before.len(), 2, "{before:#?}");
    for name in ["term", "leader.json"] {
        let text = format!("corrupt state file {}: ", root.join(name).display());
        assert!(
            before.iter().any(|w| w.starts_with(&text)),
            "{name}: {before:#?}"
        );
        assert!(
            !root.join(format!("{name}.corrupt")).exists(),
            "{name} renamed"
        );
    }
    assert_eq!(
        env.list_json()["unreadable"].as_array().map(Vec::len),
        Some(2)
    );

    let mut run = env.spawn_run("s");
    wait_until(PATIENCE, "the job to fire", || {
        !env.lines("ledger").is_empty()
    });
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    let log = run.log_text();
    let after = warnings(&env.cmd(&["list"]).run().success().stdout);
    assert_eq!(after.len(), 2, "{after:#?}");
    for text in &after {
        assert!(text.contains("; set aside as "), "{text}");
        assert!(
            log.contains(text.as_str()),
            "list says {text:?}, the log:\n{log}"
        );
        assert!(
            before.iter().any(|b| text.starts_with(b.as_str())),
            "{before:#?} / {text}"
        );
    }
}

/// Start `run`, wait for one more fencing token in `ledger`, stop it.
fn one_leadership(env: &Env, name: &str) -> u64 {
    let before = env.lines("ledger").len();
    let mut run = env.spawn_run(name);
    wait_until(PATIENCE, "a run under this leadership", || {
        env.lines("ledger").len() > before
    });
    run.signal(Signal::TERM);
    assert_eq!(run.wait_exit(PATIENCE), Some(0), "{}", run.log_text());
    let lines = env.lines("ledger");
    lines[before..]
        .iter()
        .map(|l| l.split_whitespace().last().unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap()
}

#[test]
fn the_fencing_token_never_goes_down_when_the_term_file_is_garbage() {
    let env = Env::new().config(
        "[jobs.fenced]\nschedule = \"@every 1s\"\nshell = 'echo \"$BGSCHED_FENCING_TOKEN\" >> {dir}/ledger'\n",
    );
    let mut highest = 0;
    for i in 0..3 {
        let token = one_leadership(&env, &format!("r{i}"));
        assert!(token > highest, "{token} after {highest}");
        highest = token;
    }
    assert!(highest >= 3);

    // Garbage in the term file: recovered from the leader file.
    let term = env.state_dir().join("term");
    fs::write(&term, "\u{0}\u{0}\u{0}").unwrap();
    let token = one_leadership(&env, "after-garbage");
    assert!(token > highest, "token {token} after {highest}");
    assert!(env.state_dir().join("term.corrupt").exists());
    highest = token;

    // The leader file gone too: recovered from the run records.
    fs::write(&term, "nine").unwrap();
    fs::remove_file(env.state_dir().join("leader.json")).unwrap();
    let token = one_leadership(&env, "from-records");
    assert!(token > highest, "token {token} after {highest}");
    assert!(env.state_dir().join("term.2.corrupt").exists());
    let all = env.records("fenced");
    let max_recorded = all.iter().filter_map(|r| r["term"].as_u64()).max();
    assert_eq!(max_recorded, Some(token), "{all:#?}");
}

/// A tiny tmpfs mounted over a directory, unmounted on drop.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path) -> Option<SmallDisk> {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk {
            at: at.to_path_buf(),
        })
    }

    /// Write a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.at.join("filler");
        let mut f = fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

#[test]
fn on_a_full_disk_claims_back_off_and_every_record_is_written_once_there_is_room() {
    let env = Env::new().config(&format!(
        "[jobs.tick]\nschedule = \"@every 1s\"\nshell = '{}'\n\n[jobs.manual]\nschedule = \"@yearly\"\nshell = 'echo manual >> {{dir}}/manual'\n\n[jobs.giveup]\nschedule = \"@yearly\"\noverlap = \"allow\"\ncommand = [\"true\"]\n",
        ledger_line("ran", "ledger")
    ));
    let Some(disk) = SmallDisk::mount(&env.state_dir()) else {
        // Only where mounting is not permitted (not root, no CAP_SYS_ADMIN).
        eprintln!("skipped: cannot mount a small tmpfs here to fill up");
        return;
    };
    // Both jobs' directories exist before the disk fills.
    env.cmd(&["trigger", "manual"]).run().success();
    let run = env.spawn_run_with("full", &["--http", "127.0.0.1:0"]);
    let port = run.http_port();
    wait_until(PATIENCE, "a first fire", || !env.lines("ledger").is_empty());

    let filler = disk.fill();
    const FAILED: &str = "claim failed, will retry";
    wait_until(PATIENCE, "a claim to fail on the full disk", || {
        run.log_text().contains(FAILED)
    });
    let rejected = || {
        sample(
            &metrics(port),
            "bgsched_claims_rejected_total{reason=\"backend_error\"}",
        )
    };
    let at_start = rejected();
    // A measurement window: the claim rate while the disk stays full.
    let window = Duration::from_secs(5);
    let start = Instant::now();
    std::thread::sleep(window);
    let attempts = rejected() - at_start;
    let took = start.elapsed().as_secs_f64();
    assert!(
        attempts <= 8.0,
        "{attempts} failed claims in {took:.1}s: retries must back off"
    );
    assert_eq!(
        count(&run.log_text(), FAILED),
        1,
        "one ERROR per streak of failures: {}",
        run.log_text()
    );

    // A manual run whose record cannot be written waits until it can.
    let log = env.path("trigger.log");
    let mut trigger = env.cmd(&["trigger", "manual"]).0;
    trigger
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::OpenOptions::new().append(true).open(&log).unwrap());
    let mut trigger = KillOnDrop(trigger.spawn().unwrap());
    let trigger = &mut trigger.0;
    wait_until(PATIENCE, "the manual run to try to record", || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("could not write the run record"))
    });
    assert_eq!(env.lines("manual").len(), 2, "the manual job ran");
    assert!(trigger.try_wait().unwrap().is_none(), "gave up the record");
    let before = env.records("manual").len();

    // Told to stop while it waits for room, a supervisor gives its record up.
    let log2 = env.path("giveup.log");
    let mut giveup = env.cmd(&["trigger", "giveup"]).0;
    giveup
        .stdout(fs::File::create(&log2).unwrap())
        .stderr(fs::OpenOptions::new().append(true).open(&log2).unwrap());
    let mut giveup = KillOnDrop(giveup.spawn().unwrap());
    wait_until(PATIENCE, "the second manual run to try to record", || {
        fs::read_to_string(&log2).is_ok_and(|t| t.contains("could not write the run record"))
    });
    let pid = rustix::process::Pid::from_raw(giveup.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    wait_until(PATIENCE, "the stopped trigger to exit", || {
        giveup.0.try_wait().unwrap().is_some()
    });

    fs::remove_file(&filler).unwrap();
    let mut status = None;
    wait_until(PATIENCE, "the trigger to finish once there is room", || {
        status = trigger.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(
        status.unwrap().code(),
        Some(0),
        "{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let manual = env.records("manual");
    assert_eq!(manual.len(), before + 1, "{manual:#?}");
    assert_eq!(manual.last().unwrap()["outcome"], "success");
    assert_eq!(manual.last().unwrap()["trigger"], "manual");
    assert!(env.records("giveup").is_empty(), "the given-up record");

    // Scheduled fires resume, and say so once.
    let fired = env.lines("ledger").len();
    wait_until(PATIENCE, "scheduled fires to resume", || {
        env.lines("ledger").len() > fired + 1
    });
    wait_until(PATIENCE, "the end of the streak in the log", || {
        run.log_text().contains("claims work again")
    });
    // The ticks that could not be claimed while the disk was full left
    // their `missed` entries, written once there was room.
    wait_until(
        PATIENCE,
        "the missed entries of the full-disk ticks",
        || {
            history_json(&env, &["tick", "-n", "100"])
                .iter()
                .any(|r| r["outcome"] == "missed")
        },
    );
    drop(run);
    drop(disk);
}

/// A child that must not outlive a failed test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bgsched <args>` as user nobody (tests run as root, who may write anywhere).
fn as_nobody(env: &Env, args: &[&str]) -> Option<Out> {
    let probe = Command::new("setpriv").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        return None;
    }
    let c = env.cmd(args).0;
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(c.get_program())
        .args(c.get_args())
        .current_dir(env.dir())
        .env_remove("BGSCHED_CONFIG")
        .env_remove("BGSCHED_STATE_DIR")
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    Some(Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[test]
fn a_state_directory_that_cannot_be_written_is_reported_with_its_cause_once() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new().config("[jobs.a]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n");
    fs::create_dir_all(env.state_dir().join("jobs")).unwrap();
    let open = fs::Permissions::from_mode(0o755);
    fs::set_permissions(env.dir(), open.clone()).unwrap();
    fs::set_permissions(env.path("jobs.toml"), fs::Permissions::from_mode(0o644)).unwrap();
    let state = env.state_dir();
    for (args, path) in [
        (&["run"][..], state.join("leader.lock")),
        (&["trigger", "a"][..], state.join("jobs/a")),
    ] {
        let Some(out) = as_nobody(&env, args) else {
            eprintln!("skipped: no setpriv to run as another user");
            return;
        };
        assert_eq!(out.code, Some(1), "{out:?}");
        let line = format!(
            "bgsched: state directory {}: Permission denied (os error 13)\n",
            path.display()
        );
        assert!(out.stderr.ends_with(&line), "{args:?}: {out:?}");
        assert_eq!(count(&out.stderr, "Permission denied"), 1, "{out:?}");
    }

    // A term file it cannot read: no token could be known to be new, so
    // `run` refuses to lead, naming the file.
    let env = Env::new().config("[jobs.a]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n");
    fs::set_permissions(env.dir(), open).unwrap();
    fs::set_permissions(env.path("jobs.toml"), fs::Permissions::from_mode(0o644)).unwrap();
    let state = env.state_dir();
    fs::create_dir_all(state.join("jobs")).unwrap();
    let term = state.join("term");
    fs::write(&term, "7").unwrap();
    fs::set_permissions(&term, fs::Permissions::from_mode(0o600)).unwrap();
    for dir in [&state, &state.join("jobs")] {
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    }
    let out = as_nobody(&env, &["run"]).unwrap();
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = format!(
        "bgsched: state directory {}: Permission denied (os error 13)\n",
        term.display()
    );
    assert!(out.stderr.ends_with(&line), "{out:?}");
    assert_eq!(fs::read_to_string(&term).unwrap(), "7");
}

#[test]
fn a_standalone_standby_stops_at_once_on_sigterm_and_sigint() {
    let env = Env::new().config(&format!(
        "[jobs.tick]\nschedule = \"@every 1s\"\nshell = '{}'\n",
        ledger_line("ran", "ledger")
    ));
    let leader = env.spawn_run("leader");
    wait_until(PATIENCE, "the leader to fire", || {
        !env.lines("ledger").is_empty()
    });
    for (name, sig) in [("standby-term", Signal::TERM), ("standby-int", Signal::INT)] {
        let mut standby = env.spawn_run(name);
        wait_until(PATIENCE, "the standby to wait for leadership", || {
            standby.log_text().contains("waiting for leadership")
        });
        standby.signal(sig);
        let start = Instant::now();
        let code = standby.wait_exit(PATIENCE);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name} took {:?} to stop: {}",
            start.elapsed(),
            standby.log_text()
        );
        assert_eq!(code, Some(0), "{}", standby.log_text());
    }
    assert!(alive(leader.pid()), "{}", leader.log_text());
    let fired = env.lines("ledger").len();
    wait_until(PATIENCE, "the leader to go on firing", || {
        env.lines("ledger").len() > fired
    });
}

#[test]
fn a_trigger_leaves_corrupt_records_to_run_but_clears_a_file_in_its_way() {
    let env = Env::new().config(
        "[jobs.a]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n\n[jobs.b]\nschedule = \"@yearly\"\ncommand = [\"true\"]\n",
    );
    let jobs = env.state_dir().join("jobs");
    fs::create_dir_all(jobs.join("a/runs")).unwrap();
    fs::create_dir_all(jobs.join("b")).unwrap();
    let torn = jobs.join("a/runs/0190c5a8-0000-7000-8000-000000000001.json");
    fs::write(&torn, TORN).unwrap();
    fs::write(jobs.join("b/runs"), "in the way").unwrap();

    env.cmd(&["trigger", "a"]).run().success();
    assert!(
        torn.exists(),
        "trigger moved a corrupt record; that is run's job"
    );
    let a = history_json(&env, &["a"]);
    assert!(a.iter().any(|r| r["outcome"] == "success"), "{a:#?}");
    assert_eq!(unreadable(&a).len(), 1, "{a:#?}");

    let out = env.cmd(&["trigger", "b"]).run().success();
    assert!(
        out.stderr.contains(&format!(
            "corrupt state file {}: a file where a directory belongs; set aside as {}.corrupt",
            jobs.join("b/runs").display(),
            jobs.join("b/runs").display()
        )),
        "{out:?}"
    );
    assert!(jobs.join("b/runs").is_dir());
    assert_eq!(env.records("b")[0]["outcome"], "success");
}
