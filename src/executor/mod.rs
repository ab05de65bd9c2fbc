//! Running one job: a per-run supervisor that owns the child's process group,
//! its output, its timeout and its record.
//!
//! The scheduler never runs jobs itself. For every fire it starts a
//! supervisor (`bgsched` re-executed with the hidden `__supervise` command)
//! and hands it the run's [`RunSpec`] and the claim's lock. From then on the
//! run does not depend on the scheduler: if the scheduler is killed or
//! paused, the supervisor still enforces the timeout, keeps the job's run
//! lock (so `overlap = "skip"` holds) and records the outcome.
//! `bgsched trigger` runs the same supervisor code in the foreground.

pub mod contain;
pub mod entry;
pub mod output;
pub mod report;

pub use entry::SUPERVISE_COMMAND;

use crate::config::{Job, Overlap, Program};
use crate::coordination::standalone::duration_ms;
use crate::coordination::{BackendSpec, Hold, Outcome, RunRecord, RunRecorder, Trigger, Turn};
use chrono::{DateTime, Utc};
use output::{pump, Stream, Tail};
use rustix::process::{kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};

/// The environment variable that names the descriptor a supervisor reads
/// its [`RunSpec`] from. The spec itself does not travel in the
/// environment: it holds the etcd password, and a process's environment is
/// readable in `/proc/<pid>/environ` and inherited by whatever it starts.
pub const SPEC_FD_ENV: &str = "BGSCHED_SUPERVISE_SPEC_FD";
/// How long to keep reading output after the job's group is gone; only a
/// process that escaped the group (e.g. `setsid`) can hold a pipe that long.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Everything a supervisor needs to run one job once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub run_id: String,
    pub job: String,
    pub tick: DateTime<Utc>,
    pub trigger: Trigger,
    pub instance: String,
    pub term: u64,
    pub program: Program,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub kill_grace: Duration,
    /// Where the supervisor records the run.
    pub backend: BackendSpec,
    /// Descriptor number of the inherited run lock, if the claim took one.
    pub hold_fd: Option<i32>,
    /// The lease keeping the run's marker alive, and when it was granted.
    pub lease: Option<(i64, DateTime<Utc>)>,
    pub log_json: bool,
    /// Print the job's pid on stdout once it runs (for the scheduler).
    #[serde(default)]
    pub report_pid: bool,
    /// Wait this long before the first attempt (the job's `jitter`).
    #[serde(default)]
    pub delay: Duration,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub retry_backoff: Duration,
    #[serde(default)]
    pub retry_backoff_max: Duration,
    #[serde(default)]
    pub on_failure: Option<Vec<String>>,
    #[serde(default)]
    pub overlap: Overlap,
    /// Whether the run waits for (or replaces) an active run first.
    #[serde(default)]
    pub turn: Turn,
}

impl RunSpec {
    pub fn new(
        job: &Job,
        run_id: String,
        tick: DateTime<Utc>,
        trigger: Trigger,
        backend: BackendSpec,
    ) -> Self {
        RunSpec {
            run_id,
            job: job.name.clone(),
            tick,
            trigger,
            instance: String::new(),
            term: 0,
            program: job.program.clone(),
            env: job.env.clone(),
            working_dir: job.working_dir.clone(),
            timeout: job.timeout,
            kill_grace: job.kill_grace,
            backend,
            hold_fd: None,
            lease: None,
            log_json: false,
            report_pid: false,
            delay: Duration::ZERO,
            retries: job.retries,
            retry_backoff: job.retry_backoff,
            retry_backoff_max: job.retry_backoff_max,
            on_failure: job.on_failure.clone(),
            overlap: job.overlap,
            turn: Turn::Now,
        }
    }

    /// The final record of a run that never started.
    pub fn unstarted(&self, reason: String) -> RunRecord {
        let now = Utc::now();
        let mut rec = self.record(Outcome::StartFailed, now);
        rec.ended_at = Some(now);
        rec.duration_ms = Some(0);
        rec.reason = Some(reason);
        rec
    }

    fn record(&self, outcome: Outcome, started_at: DateTime<Utc>) -> RunRecord {
        RunRecord {
            run_id: self.run_id.clone(),
            job: self.job.clone(),
            tick: self.tick,
            trigger: self.trigger,
            instance: self.instance.clone(),
            term: self.term,
            outcome,
            started_at,
            ended_at: None,
            duration_ms: None,
            exit_code: None,
            signal: None,
            reason: None,
            pid: None,
            missed_ticks: None,
            output_tail: String::new(),
            attempt: 1,
            supervisor_pid: Some(std::process::id()),
        }
    }
}

/// Where a foreground supervisor echoes the job's output (for `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Only tracing events (a background supervisor).
    Log,
    /// Copy the job's output lines to this process's stdout instead.
    Terminal,
}

/// Run the job described by `spec` to completion (with its jitter delay
/// and retries) and record it through `recorder`. `hold` (the claim's lock)
/// is kept until the record is final.
pub async fn supervise<R: RunRecorder>(
    spec: &RunSpec,
    recorder: &mut R,
    hold: Option<OwnedFd>,
    echo: Echo,
) -> Supervised {
    // Registered before the job starts, so a stop request can never kill
    // the supervisor with the default action and orphan the run.
    let mut signals = StopSignals::new();
    contain::become_subreaper();
    if !spec.delay.is_zero() {
        tracing::info!(job = %spec.job, run_id = %spec.run_id, delay_ms = spec.delay.as_millis() as u64, "jitter: starting later");
        let stopped = tokio::select! {
            () = tokio::time::sleep(spec.delay) => None,
            why = signals.next() => Some(format!("supervisor {why} during the jitter delay: not started")),
            why = recorder.fenced() => Some(why),
        };
        if let Some(reason) = stopped {
            let mut rec = spec.unstarted(reason);
            finish(&mut rec, recorder).await;
            return Supervised {
                record: rec,
                interrupted: true,
            };
        }
    }
    let hold = if spec.turn == Turn::Now {
        hold
    } else {
        let waiting = spec.record(Outcome::Running, Utc::now());
        tracing::info!(job = %spec.job, run_id = %spec.run_id, "waiting for the active run to end");
        let stopped = tokio::select! {
            taken = recorder.take_turn(&spec.turn, &waiting) => taken.err().map(|e| (format!("could not take its turn: {e}"), false)),
            why = signals.next() => Some((format!("supervisor {why} while waiting for the active run: not started"), true)),
        };
        if let Some((reason, interrupted)) = stopped {
            tracing::warn!(job = %spec.job, run_id = %spec.run_id, "{reason}");
            let mut rec = spec.unstarted(reason);
            finish(&mut rec, recorder).await;
            return Supervised {
                record: rec,
                interrupted,
            };
        }
        // The waiting place is free for the next run; the run lock is the
        // recorder's now.
        drop(hold);
        None
    };
    let mut attempt = 1;
    let (rec, stopped_because) = loop {
        let (mut rec, stopped_because) =
            run_attempt(spec, attempt, recorder, &mut signals, echo).await;
        let failed = matches!(
            rec.outcome,
            Outcome::Failed | Outcome::TimedOut | Outcome::Killed
        );
        // Only the job's own failure is retried, not a stop we asked for.
        let ours = matches!(stopped_because, Some(why) if why != "timeout");
        if !failed || ours || attempt > spec.retries {
            break (rec, stopped_because);
        }
        let wait = retry_backoff(spec.retry_backoff, spec.retry_backoff_max, attempt);
        tracing::warn!(
            job = %spec.job, run_id = %spec.run_id, attempt, outcome = %rec.outcome,
            retry_in_ms = wait.as_millis() as u64, "attempt failed: retrying"
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // Stopped while waiting: the failed attempt is the run's result.
            why = signals.next() => {
                rec.reason = Some(format!("{}; not retried: supervisor {why}", rec.reason.unwrap_or_else(|| rec.outcome.to_string())));
                break (rec, Some(why));
            }
            why = recorder.fenced() => {
                rec.reason = Some(format!("{}; not retried: {why}", rec.reason.unwrap_or_else(|| rec.outcome.to_string())));
                break (rec, Some("fenced"));
            }
        }
        // The failed attempt becomes an entry of its own; the run's id (and
        // its running mark) carries on with the next attempt.
        rec.run_id = crate::coordination::standalone::new_run_id();
        if let Err(e) = recorder.attempt_failed(&rec).await {
            tracing::error!(job = %spec.job, run_id = %spec.run_id, attempt, "could not record the failed attempt: {e}");
        }
        attempt += 1;
    };
    let mut rec = rec;
    finish(&mut rec, recorder).await;
    drop(hold);
    tracing::info!(
        job = %spec.job, run_id = %spec.run_id, outcome = %rec.outcome,
        exit_code = rec.exit_code, signal = rec.signal, duration_ms = rec.duration_ms,
        attempt = rec.attempt, "run finished"
    );
    let interrupted = matches!(stopped_because, Some("terminated" | "interrupted"));
    if !interrupted && stopped_because != Some("replaced") && rec.outcome.is_failure() {
        if let Some(hook) = &spec.on_failure {
            run_hook(hook, spec, &rec).await;
        }
    }
    Supervised {
        record: rec,
        interrupted,
    }
}

/// The wait before retry number `retry` (1 for the first): `first`,
/// doubling each time, at most `max`.
pub fn retry_backoff(first: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    first.checked_mul(factor).unwrap_or(max).min(max)
}

/// One attempt: start the job, wait for it (or its timeout, a stop request,
/// or fencing), and return its record, not yet stored, with why the
/// supervisor stopped it, if it did.
async fn run_attempt<R: RunRecorder>(
    spec: &RunSpec,
    attempt: u32,
    recorder: &mut R,
    signals: &mut StopSignals,
    echo: Echo,
) -> (RunRecord, Option<&'static str>) {
    let started_at = Utc::now();
    let mut rec = spec.record(Outcome::Running, started_at);
    rec.attempt = attempt;

    let cgroup = contain::RunCgroup::create(&spec.run_id, attempt);
    let (mut child, combined) = match spawn_job(spec, attempt, cgroup.as_ref()) {
        Ok(spawned) => spawned,
        Err(reason) => {
            if let Some(c) = cgroup {
                c.remove();
            }
            tracing::error!(job = %spec.job, run_id = %spec.run_id, "could not start: {reason}");
            rec.outcome = Outcome::StartFailed;
            rec.reason = Some(reason);
            return (rec, None);
        }
    };
    let pid = child.id().unwrap_or(0);
    rec.pid = Some(pid);
    if spec.report_pid {
        // The scheduler reads this to kill what is left of the job's group
        // should this supervisor die without cleaning up.
        let _ = writeln!(std::io::stdout(), "{pid}").and_then(|()| std::io::stdout().flush());
    }
    if let Err(e) = recorder.started(&rec).await {
        tracing::error!(job = %spec.job, run_id = %spec.run_id, "could not record the run start: {e}");
    }
    tracing::info!(
        job = %spec.job, run_id = %spec.run_id, tick = %spec.tick.to_rfc3339(),
        trigger = %spec.trigger, instance = %spec.instance, term = (spec.term != 0).then_some(spec.term), pid, attempt,
        "run started"
    );

    let tail = Tail::default();
    // One pipe for stdout and stderr (see `spawn_job`): one reader.
    let readers = [combined.map(|p| spawn_pump(p, Stream::Combined, spec, &tail, echo))];
    let group = Pid::from_raw(pid as i32);
    let stop_requested = signals.next();
    let deadline = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };

    let mut fence_reason = None;
    let mut replacements = recorder.replacements();
    let mut replace_reason = None;
    let (status, stopped_because) = tokio::select! {
        status = child.wait() => (status, None),
        why = replaced(&mut replacements) => {
            tracing::info!(job = %spec.job, run_id = %spec.run_id, "stopping: {why}");
            replace_reason = Some(why);
            (terminate(&mut child, group, spec.kill_grace, signals, recorder).await, Some("replaced"))
        }
        () = deadline => (terminate(&mut child, group, spec.kill_grace, signals, recorder).await, Some("timeout")),
        why = stop_requested => (terminate(&mut child, group, spec.kill_grace, signals, recorder).await, Some(why)),
        why = recorder.fenced() => {
            // The run's mark is about to expire: stop the job now, without
            // a grace period, so it never runs unmarked next to a new run.
            tracing::error!(job = %spec.job, run_id = %spec.run_id, "self-fencing: {why}");
            fence_reason = Some(why);
            (terminate(&mut child, group, Duration::ZERO, signals, recorder).await, Some("fenced"))
        }
    };
    // The direct child is gone; anything it left behind goes too, in its
    // group or not (see `contain`), so no orphan survives and none holds
    // the output pipe open.
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::KILL);
    }
    if let Some(c) = &cgroup {
        c.kill();
    }
    contain::kill_descendants().await;
    if let Some(c) = cgroup {
        c.remove();
    }
    let drain_until = tokio::time::Instant::now() + DRAIN_LIMIT;
    for reader in readers.into_iter().flatten() {
        let abort = reader.abort_handle();
        if tokio::time::timeout_at(drain_until, reader).await.is_err() {
            abort.abort();
        }
    }

    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(st) => {
            rec.exit_code = st.code();
            rec.signal = st.signal();
            rec.outcome = match (stopped_because, st.code()) {
                (Some("timeout"), _) => Outcome::TimedOut,
                (Some("fenced"), _) => Outcome::Lost,
                (_, Some(0)) => Outcome::Success,
                (_, Some(_)) => Outcome::Failed,
                (_, None) => Outcome::Killed,
            };
            rec.reason = match stopped_because {
                Some("timeout") => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(spec.timeout.unwrap_or_default())
                )),
                Some("fenced") => fence_reason.take(),
                Some("replaced") => Some(format!(
                    "{}: job stopped",
                    replace_reason
                        .take()
                        .unwrap_or_else(|| "replaced by a newer run".into())
                )),
                Some(why) => Some(format!("supervisor {why}: job stopped")),
                None => None,
            };
        }
        Err(e) => {
            rec.outcome = Outcome::Lost;
            rec.reason = Some(format!("could not wait for the job: {e}"));
        }
    }
    rec.output_tail = tail.contents();
    let ended = Utc::now();
    rec.ended_at = Some(ended);
    rec.duration_ms = Some(duration_ms(rec.started_at, ended));
    (rec, stopped_because)
}

/// Longest an `on_failure` hook may run before its group is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Output of the run handed to a hook, at most (environment variables have
/// to stay small).
const HOOK_OUTPUT_LIMIT: usize = 4096;

/// Run the job's `on_failure` hook for a finished run, in its own process
/// group, with the run's details in `BGSCHED_*` variables; its output goes
/// to the log.
pub async fn run_hook(hook: &[String], spec: &RunSpec, rec: &RunRecord) {
    let Some((program, args)) = hook.split_first() else {
        return;
    };
    let mut output = rec.output_tail.as_str();
    if output.len() > HOOK_OUTPUT_LIMIT {
        let mut cut = output.len() - HOOK_OUTPUT_LIMIT;
        while !output.is_char_boundary(cut) {
            cut += 1;
        }
        output = &output[cut..];
    }
    let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut cmd = job_command(program, args, spec);
    cmd.env("BGSCHED_JOB", &rec.job)
        .env("BGSCHED_RUN_ID", &rec.run_id)
        .env("BGSCHED_OUTCOME", rec.outcome.to_string())
        .env("BGSCHED_SCHEDULED_AT", rfc3339(rec.tick))
        .env("BGSCHED_STARTED_AT", rfc3339(rec.started_at))
        .env("BGSCHED_TRIGGER", rec.trigger.to_string())
        .env("BGSCHED_INSTANCE", &rec.instance)
        .env("BGSCHED_ATTEMPT", rec.attempt.to_string())
        .env(
            "BGSCHED_EXIT_CODE",
            rec.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        )
        .env(
            "BGSCHED_SIGNAL",
            rec.signal.map(|c| c.to_string()).unwrap_or_default(),
        )
        .env(
            "BGSCHED_DURATION_MS",
            rec.duration_ms.unwrap_or(0).to_string(),
        )
        .env("BGSCHED_REASON", rec.reason.as_deref().unwrap_or(""))
        .env("BGSCHED_OUTPUT_TAIL", output);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(job = %rec.job, run_id = %rec.run_id, "on_failure hook {program} could not start: {e}");
            return;
        }
    };
    let group = child.id().and_then(|p| Pid::from_raw(p as i32));
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            tracing::info!(job = %rec.job, run_id = %rec.run_id, status = %out.status, output = %text.trim_end(), "on_failure hook finished");
        }
        Ok(Err(e)) => {
            tracing::error!(job = %rec.job, run_id = %rec.run_id, "on_failure hook: {e}")
        }
        Err(_) => {
            tracing::error!(job = %rec.job, run_id = %rec.run_id, "on_failure hook still running after {}s: killed", HOOK_TIMEOUT.as_secs());
        }
    }
    // Whatever the hook left behind goes with it.
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::KILL);
    }
    contain::kill_descendants().await;
}

/// How a supervised run ended.
pub struct Supervised {
    pub record: RunRecord,
    /// A stop signal to the supervisor ended the run (e.g. Ctrl-C on `trigger`).
    pub interrupted: bool,
}

async fn finish<R: RunRecorder>(rec: &mut RunRecord, recorder: &mut R) {
    let ended = *rec.ended_at.get_or_insert_with(Utc::now);
    rec.duration_ms = Some(duration_ms(rec.started_at, ended));
    if let Err(e) = recorder.finished(rec).await {
        tracing::error!(job = %rec.job, run_id = %rec.run_id, "could not write the run record: {e}");
    }
}

/// SIGTERM and SIGINT to the supervisor: the first asks for a graceful
/// stop, any further one (of either kind) for SIGKILL now. SIGUSR1 is a
/// newer run replacing this one (`overlap = "replace"`, standalone).
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    usr1: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        StopSignals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            usr1: signal(SignalKind::user_defined1()).ok(),
        }
    }

    async fn next(&mut self) -> &'static str {
        async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
            match sig {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            Some(()) = recv(&mut self.term) => "terminated",
            Some(()) = recv(&mut self.int) => "interrupted",
            Some(()) = recv(&mut self.usr1) => "replaced",
        }
    }
}

/// Resolves with the reason once a newer run asks this one to stop.
async fn replaced(requests: &mut tokio::sync::watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(why) = requests.borrow_and_update().clone() {
            return why;
        }
        if requests.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// SIGTERM the job's group, SIGKILL it after `grace` (or at once on a
/// further stop signal, or if the run's mark is about to be lost), and reap
/// the direct child.
async fn terminate<R: RunRecorder>(
    child: &mut tokio::process::Child,
    group: Option<Pid>,
    grace: Duration,
    signals: &mut StopSignals,
    recorder: &mut R,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::TERM);
    }
    // Those that left the group are asked to stop too, at the same time.
    contain::signal_descendants(Signal::TERM);
    tokio::select! {
        status = child.wait() => return status,
        () = tokio::time::sleep(grace) => {}
        _ = signals.next() => {}
        why = recorder.fenced() => tracing::error!("self-fencing during the kill grace period: {why}"),
    }
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::KILL);
    }
    contain::signal_descendants(Signal::KILL);
    child.wait().await
}

fn spawn_pump(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    spec: &RunSpec,
    tail: &Tail,
    echo: Echo,
) -> tokio::task::JoinHandle<()> {
    let (job, run_id) = (spec.job.clone(), spec.run_id.clone());
    // In the run's span (see `observe::log::run_span`), like every event of the run.
    tokio::spawn(tracing::Instrument::in_current_span(pump(
        pipe,
        stream,
        tail.clone(),
        move |stream, line| match (echo, stream) {
            // A reader that went away (`trigger job | head -1`) must not
            // take the run down: the output still goes to the record.
            (Echo::Terminal, Stream::Stdout | Stream::Combined) => {
                let _ = writeln!(std::io::stdout(), "{line}");
            }
            (Echo::Terminal, Stream::Stderr) => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            (Echo::Log, Stream::Stdout | Stream::Combined) => {
                tracing::info!(target: "bgsched::job", job = %job, run_id = %run_id, stream = stream.name(), "{line}")
            }
            (Echo::Log, Stream::Stderr) => {
                tracing::warn!(target: "bgsched::job", job = %job, run_id = %run_id, stream = "stderr", "{line}")
            }
        },
    )))
}

/// A process of the job's (the job itself or its hook): the job's
/// environment and working directory, no stdin, output piped, in a process
/// group of its own so it can be stopped as a whole.
fn job_command(program: &str, args: &[String], spec: &RunSpec) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove(SPEC_FD_ENV)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    for name in secret_vars(&spec.backend) {
        cmd.env_remove(name);
    }
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    cmd
}

/// The variables of this process's environment that hold the etcd
/// password (the one `password_env` names, and any copy of it): no child
/// (supervisor, job, retry or hook) may inherit them.
pub fn secret_vars(backend: &BackendSpec) -> Vec<std::ffi::OsString> {
    let BackendSpec::Etcd(cfg) = backend else {
        return Vec::new();
    };
    let Some(password) = cfg.password.as_deref() else {
        return Vec::new();
    };
    std::env::vars_os()
        .filter(|(_, value)| value.as_encoded_bytes() == password.as_bytes())
        .map(|(name, _)| name)
        .collect()
}

/// Start the job's process in a new process group, or say why it cannot
/// start. Its stdout and stderr are one pipe, returned beside the child,
/// so that their lines stay in the order written (in the foreground too:
/// the record must not depend on who watches).
fn spawn_job(
    spec: &RunSpec,
    attempt: u32,
    cgroup: Option<&contain::RunCgroup>,
) -> Result<
    (
        tokio::process::Child,
        Option<tokio::net::unix::pipe::Receiver>,
    ),
    String,
> {
    let argv = spec.program.argv();
    let (program, args) = argv.split_first().ok_or("empty command")?;
    if let Some(dir) = &spec.working_dir {
        if !dir.is_dir() {
            return Err(format!("working_dir {} is not a directory", dir.display()));
        }
    }
    let mut cmd = job_command(program, args, spec);
    cmd.env("BGSCHED_JOB", &spec.job)
        .env("BGSCHED_RUN_ID", &spec.run_id)
        .env(
            "BGSCHED_SCHEDULED_AT",
            spec.tick
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        )
        .env("BGSCHED_TRIGGER", spec.trigger.to_string())
        .env("BGSCHED_INSTANCE", &spec.instance)
        .env("BGSCHED_FENCING_TOKEN", spec.term.to_string())
        .env("BGSCHED_ATTEMPT", attempt.to_string());
    let pipe_err = |e: std::io::Error| format!("cannot create the output pipe: {e}");
    let (reader, writer) = std::io::pipe().map_err(pipe_err)?;
    cmd.stdout(writer.try_clone().map_err(pipe_err)?)
        .stderr(writer);
    let combined = Some(
        tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)).map_err(pipe_err)?,
    );
    // If the supervisor itself is killed (`kill -9`, the OOM killer), its
    // job must not run on unsupervised: it would hold no lock and no lease,
    // so another run could start beside it.
    let procs = cgroup.map(contain::RunCgroup::procs);
    // SAFETY: prctl, open and write are async-signal-safe, and nothing in
    // the closure allocates.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &procs {
                contain::enter_cgroup(procs);
            }
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("command not found: {program}"),
        std::io::ErrorKind::PermissionDenied => format!("permission denied: {program}"),
        _ => format!("cannot execute {program}: {e}"),
    })?;
    // Our copies of the pipe's write end go with `cmd`; the reader sees its
    // end once the job's processes have closed theirs.
    drop(cmd);
    Ok((child, combined))
}

/// Start a background supervisor for `spec`, handing it `hold`. The
/// supervisor lives in its own process group, so a Ctrl-C meant for the
/// scheduler's terminal does not reach it; the scheduler forwards shutdown
/// itself.
///
/// A `detached` supervisor (from `trigger --detach`) gets no stdout/stderr:
/// nobody is left to read them, and holding the caller's pipes open would
/// keep whoever reads them waiting for the whole run.
pub fn spawn_supervisor(
    mut spec: RunSpec,
    hold: Hold,
    detached: bool,
) -> std::io::Result<tokio::process::Child> {
    use std::os::fd::AsRawFd;
    let lock = match hold {
        Hold::None => None,
        Hold::Lock(fd) => Some(fd),
        Hold::Lease { id, granted_at } => {
            spec.lease = Some((id, granted_at));
            None
        }
    };
    // Above the standard descriptors, which the spawn replaces: a lock that
    // landed on 0-2 (a scheduler started with them closed) would be lost.
    let lock = match lock {
        Some(fd) if fd.as_raw_fd() <= 2 => Some(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?),
        other => other,
    };
    spec.hold_fd = lock.as_ref().map(|fd| fd.as_raw_fd());
    spec.report_pid = !detached;
    if let Some(fd) = &lock {
        // Inherited by exactly this spawn: the scheduler spawns from one task
        // and closes its copy right after.
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    }
    let json = serde_json::to_string(&spec).expect("run spec serializes");
    let spec_fd = spec_file(&json)?;
    let spec_raw = spec_fd.as_raw_fd();
    // The running binary itself, even if the file was replaced or removed
    // since (a package upgrade): current_exe() would then name a path that
    // no longer exists.
    let exe = if std::path::Path::new("/proc/self/exe").exists() {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let mut cmd = Command::new(exe);
    if detached {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped());
    }
    for name in secret_vars(&spec.backend) {
        cmd.env_remove(name);
    }
    // SAFETY: fcntl is async-signal-safe; nothing else runs in the closure.
    unsafe {
        cmd.pre_exec(move || {
            // Inherited in this child only: the scheduler's copy stays
            // close-on-exec, so no other spawn can pick it up.
            let fd = std::os::fd::BorrowedFd::borrow_raw(spec_raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    let child = cmd
        .arg(SUPERVISE_COMMAND)
        .env(SPEC_FD_ENV, spec_raw.to_string())
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(false)
        .spawn();
    // Closing our copy does not release the lock: the supervisor's
    // descriptor refers to the same open file description.
    drop(lock);
    drop(spec_fd);
    child
}

/// An anonymous in-memory file holding `json`, read from the start by the
/// supervisor, above the standard descriptors (which the spawn replaces).
fn spec_file(json: &str) -> std::io::Result<OwnedFd> {
    use rustix::fs::{memfd_create, MemfdFlags};
    let fd = memfd_create("bgsched-run-spec", MemfdFlags::CLOEXEC)?;
    let fd = if std::os::fd::AsRawFd::as_raw_fd(&fd) <= 2 {
        rustix::io::fcntl_dupfd_cloexec(&fd, 3)?
    } else {
        fd
    };
    let mut file = std::fs::File::from(fd);
    file.write_all(json.as_bytes())?;
    Ok(OwnedFd::from(file))
}

/// In a supervisor process: read the spec from the descriptor named by
/// [`SPEC_FD_ENV`], close it, and drop the variable.
pub fn read_spec() -> Result<RunSpec, String> {
    use std::io::{Read, Seek};
    let raw: i32 = std::env::var(SPEC_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            format!("{SUPERVISE_COMMAND} is internal to bgsched ({SPEC_FD_ENV} is not set)")
        })?;
    // SAFETY: single-threaded at this point; no runtime has started yet.
    unsafe { std::env::remove_var(SPEC_FD_ENV) };
    // The descriptor must be the memfd the scheduler made for this process,
    // not whatever else happens to have that number.
    let target = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
    if !target.to_string_lossy().contains("bgsched-run-spec") {
        return Err(format!(
            "{SUPERVISE_COMMAND}: descriptor {raw} is not a run spec"
        ));
    }
    // SAFETY: the descriptor was opened by the scheduler for this process,
    // checked above, and nothing else in this process refers to it.
    let mut file = unsafe {
        use std::os::fd::FromRawFd;
        std::fs::File::from_raw_fd(raw)
    };
    let mut json = String::new();
    file.rewind()
        .and_then(|_| file.read_to_string(&mut json))
        .map_err(|e| format!("{SUPERVISE_COMMAND}: cannot read the run spec: {e}"))?;
    drop(file);
    serde_json::from_str(&json).map_err(|e| format!("{SUPERVISE_COMMAND}: bad run spec: {e}"))
}

/// In a supervisor process: take over the lock the scheduler handed down.
pub fn adopt_hold(fd: Option<i32>) -> Option<OwnedFd> {
    let raw = fd?;
    // SAFETY: the descriptor was opened by the parent for this process and
    // nothing else in this process refers to it.
    let owned = unsafe {
        use std::os::fd::FromRawFd;
        OwnedFd::from_raw_fd(raw)
    };
    // The job itself must not inherit the lock, or a stray grandchild could
    // keep the job "running" forever.
    let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
    Some(owned)
}
