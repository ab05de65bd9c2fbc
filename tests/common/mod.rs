//! A small fluent harness for driving the real `bgsched` binary: it writes a
//! config into a temporary directory, runs commands against it with their own
//! state directory, and waits for conditions with deadlines instead of
//! sleeping.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod builder;
pub mod etcd;
pub mod proxy;
pub mod webhook;
#[allow(unused_imports)]
pub use builder::Test;

pub const BIN: &str = env!("CARGO_BIN_EXE_bgsched");

/// Generous bound for anything that should take a second or two; the suite
/// runs on loaded 2-core machines.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A scratch directory with a config file and a state directory.
pub struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            dir: tempfile::Builder::new()
                .prefix("bgsched-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// Write `jobs.toml`; `{dir}` in the text is replaced by the scratch directory.
    pub fn config(self, toml: &str) -> Self {
        self.write("jobs.toml", toml);
        self
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(
            &path,
            text.replace("{dir}", &self.dir().display().to_string()),
        )
        .expect("write file");
        path
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// `bgsched --config <dir>/jobs.toml --state-dir <dir>/state <args>`.
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.path("jobs.toml"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .current_dir(self.dir())
            .env_remove("BGSCHED_CONFIG")
            .env_remove("BGSCHED_STATE_DIR")
            .env_remove("BGSCHED_INSTANCE_ID")
            .env("BGSCHED_LOG", "debug")
            .stdin(Stdio::null());
        Cmd(c)
    }

    /// `trigger <job> --detach`: the run id it prints.
    pub fn trigger_detached(&self, job: &str) -> String {
        let out = self.cmd(&["trigger", job, "--detach"]).run().success();
        let run_id = out.stdout.trim().to_string();
        assert_eq!(run_id.len(), 36, "detach prints the run id: {out:?}");
        run_id
    }

    /// Start `bgsched run` in the background, logging to `<dir>/<instance>.log`.
    pub fn spawn_run(&self, instance: &str) -> Scheduler {
        self.spawn_run_with(instance, &[])
    }

    /// Lines of a file the jobs append to (empty if it does not exist yet).
    pub fn lines(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `list --json`, parsed.
    pub fn list_json(&self) -> serde_json::Value {
        let out = self.cmd(&["list", "--json"]).run().success();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {}", out.stdout))
    }

    /// The `list --json` entry of one job.
    pub fn job_view(&self, job: &str) -> serde_json::Value {
        let list = self.list_json();
        list["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["name"] == job).cloned())
            .unwrap_or_else(|| panic!("job {job} not in list: {list}"))
    }

    /// Every history entry of `job` on disk, oldest first.
    pub fn records(&self, job: &str) -> Vec<serde_json::Value> {
        let dir = self.state_dir().join("jobs").join(job).join("runs");
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.retain(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        });
        paths.sort();
        paths
            .iter()
            .map(|p| {
                let text = fs::read_to_string(p).expect("read record");
                serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("torn record {}: {e}: {text}", p.display()))
            })
            .collect()
    }
}

pub struct Cmd(pub Command);

impl Cmd {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.0.env(key, value);
        self
    }

    pub fn run(mut self) -> Out {
        let Output {
            status,
            stdout,
            stderr,
        } = self.0.output().expect("run bgsched");
        Out {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    pub fn spawn(mut self) -> Child {
        self.0
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bgsched")
    }
}

#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(self, expected: i32) -> Self {
        assert_eq!(
            self.code,
            Some(expected),
            "unexpected exit status; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn success(self) -> Self {
        self.code(0)
    }

    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }
}

/// A background `bgsched run`.
pub struct Scheduler {
    pub child: Child,
    pub log: PathBuf,
    pub instance: String,
}

impl Scheduler {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).expect("pid");
        rustix::process::kill_process(pid, sig).expect("signal scheduler");
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait for the process to exit and return its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = &mut self.child;
        let mut status = None;
        wait_until(within, "the scheduler to exit", || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.and_then(|s| s.code())
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Env {
    /// What a test leaves running must not outlive it: a run whose
    /// supervisor outlives its killed scheduler (by design) would go on
    /// for its whole `sleep 600`, loading the machine for the tests after.
    /// Every process started from here works in this directory (the
    /// scheduler, its supervisors, their jobs and what those started).
    fn drop(&mut self) {
        let dir = fs::canonicalize(self.dir()).unwrap_or_else(|_| self.dir().to_path_buf());
        let me = std::process::id() as i32;
        for _ in 0..5 {
            let here: Vec<rustix::process::Pid> = fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
                .filter_map(rustix::process::Pid::from_raw)
                .collect();
            if here.is_empty() {
                return;
            }
            // Stopped first, so that none reacts to another's death.
            for sig in [rustix::process::Signal::STOP, rustix::process::Signal::KILL] {
                for pid in &here {
                    let _ = rustix::process::kill_process(*pid, sig);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // A stopped process must be continued to die promptly.
            self.signal(rustix::process::Signal::CONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll `cond` until it holds, failing the test with `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// A shell snippet for a job that appends `<event> <BGSCHED_SCHEDULED_AT> <unix time> <run id> <trigger> <instance>` to `file`.
pub fn ledger_line(event: &str, file: &str) -> String {
    format!("echo \"{event} $BGSCHED_SCHEDULED_AT $(date +%s.%N) $BGSCHED_RUN_ID $BGSCHED_TRIGGER $BGSCHED_INSTANCE\" >> {{dir}}/{file}")
}

/// The parent pid of a process, from /proc.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Env {
    /// [`Env::spawn_run`] with more arguments after `run`: its log is
    /// `<dir>/<instance>.log`.
    pub fn spawn_run_with(&self, instance: &str, extra: &[&str]) -> Scheduler {
        let log = self.path(&format!("{instance}.log"));
        let mut args = vec!["run", "--instance-id", instance];
        args.extend_from_slice(extra);
        let mut cmd = self.cmd(&args).0;
        cmd.stdout(fs::File::create(&log).expect("log file"))
            .stderr(
                fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            );
        let child = cmd.spawn().expect("spawn bgsched run");
        Scheduler {
            child,
            log,
            instance: instance.to_string(),
        }
    }
}

impl Scheduler {
    /// The port of its HTTP endpoints, from the line `run` logs once it
    /// has bound them (start it with `--http 127.0.0.1:0`).
    pub fn http_port(&self) -> u16 {
        const MARK: &str = "/status on http://";
        let mut port = None;
        wait_until(PATIENCE, "the http server's address in the log", || {
            let text = self.log_text();
            port = text.find(MARK).and_then(|at| {
                let rest = &text[at + MARK.len()..];
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                addr.rsplit(':').next()?.parse().ok()
            });
            port.is_some()
        });
        port.expect("port")
    }
}

/// `GET path` on the scheduler's HTTP port: (status, body); None if it
/// does not answer.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    etcd::http_within(port, "GET", path, None, Duration::from_secs(10)).ok()
}

/// The value of one sample in a `/metrics` text, e.g.
/// `bgsched_runs_total{job="a",outcome="success"}`; 0 when absent (a
/// labelled counter appears only once it moved).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// How tests that drive the etcd backend directly reach `endpoints`:
/// `lease_ttl` 2 s, no TLS or auth, the default clock bound.
pub fn etcd_config(
    endpoints: Vec<String>,
    prefix: &str,
) -> bgsched::coordination::etcd::EtcdConfig {
    let mut cluster = bgsched::config::ClusterSettings::with_defaults(endpoints);
    cluster.prefix = prefix.into();
    cluster.lease_ttl = Duration::from_secs(2);
    bgsched::coordination::etcd::EtcdConfig {
        cluster,
        history_limit: 10,
    }
}

impl Env {
    /// The cluster's leader (from `list --json`), once it has one.
    pub fn leader(&self) -> String {
        let mut leader = None;
        wait_until(PATIENCE, "a leader", || {
            leader = self.list_json()["leader"]["instance"]
                .as_str()
                .map(str::to_string);
            leader.is_some()
        });
        leader.expect("a leader")
    }
}

/// Waits until the scheduler serving `port` answers `/readyz` with 200.
pub fn wait_ready(port: u16) {
    wait_until(PATIENCE, "the scheduler ready", || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    });
}
