//! One attempt of a run: spawning the job in its own process group,
//! pumping its output, and ending it on timeout, stop or replacement.

use super::*;

/// How long to keep reading output after the job's group is gone; only a
/// process that escaped the group (e.g. `setsid`) can hold a pipe that long.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// One attempt: start the job, wait for it (or its timeout, a stop request,
/// or fencing), and return its record, not yet stored, with why the
/// supervisor stopped it, if it did.
pub(super) async fn run_attempt<R: RunRecorder>(
    spec: &RunSpec,
    attempt: u32,
    recorder: &mut R,
    signals: &mut Signals,
    echo: Echo,
    printed_before: u64,
) -> (RunRecord, Option<StopReason>) {
    let started_at = Utc::now();
    let mut rec = spec.record(Outcome::Running, started_at);
    rec.attempt = attempt;

    let cgroup = contain::RunCgroup::create(&spec.key.run_id, attempt);
    let (mut child, combined) = match spawn_job(spec, attempt, cgroup.as_ref()) {
        Ok(spawned) => spawned,
        Err(reason) => {
            if let Some(c) = cgroup {
                c.leave();
                c.remove();
            }
            tracing::error!(job = %spec.key.job, run_id = %spec.key.run_id, "could not start: {reason}");
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
        tracing::error!(job = %spec.key.job, run_id = %spec.key.run_id, "could not record the run start: {e}");
    }
    // After the record (the move out waits for the kernel's cgroup lock): a
    // supervisor killed meanwhile must leave its run recorded as running.
    if let Some(c) = &cgroup {
        c.leave();
    }
    tracing::info!(
        job = %spec.key.job, run_id = %spec.key.run_id, tick = %spec.key.tick.to_rfc3339(),
        trigger = %spec.key.trigger, instance = %spec.key.instance, term = (spec.key.term != 0).then_some(spec.key.term), pid, attempt,
        "run started"
    );

    let tail = Tail::with_live(recorder.live_file(attempt), printed_before);
    // Published while someone follows the run (cluster); ends with the attempt.
    let live = LivePublisher(recorder.publish_live(std::sync::Arc::new(tail.clone())));
    // One pipe for stdout and stderr (see `spawn_job`): one reader.
    let readers = [combined.map(|p| spawn_pump(p, Stream::Combined, spec, &tail, echo))];
    let group = Pid::from_raw(pid as i32);
    let stop = stop_requested(signals);
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
            tracing::info!(job = %spec.key.job, run_id = %spec.key.run_id, "stopping: {why}");
            let because = if why.starts_with(crate::coordination::CANCELLED) {
                StopReason::Cancelled
            } else {
                StopReason::Replaced
            };
            replace_reason = Some(why);
            (terminate(&mut child, group, spec.kill_grace, signals, recorder).await, Some(because))
        }
        () = deadline => (terminate(&mut child, group, spec.kill_grace, signals, recorder).await, Some(StopReason::Timeout)),
        why = stop => {
            if matches!(why, StopReason::Cancelled | StopReason::Replaced) {
                replace_reason = recorder.cancelled_by();
            }
            (terminate(&mut child, group, spec.kill_grace, signals, recorder).await, Some(why))
        }
        why = recorder.fenced() => {
            // The run's mark is about to expire: stop the job now, without
            // a grace period, so it never runs unmarked next to a new run.
            tracing::error!(job = %spec.key.job, run_id = %spec.key.run_id, "self-fencing: {why}");
            fence_reason = Some(why);
            (terminate(&mut child, group, Duration::ZERO, signals, recorder).await, Some(StopReason::Fenced))
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
                (Some(StopReason::Timeout), _) => Outcome::TimedOut,
                (Some(StopReason::Fenced), _) => Outcome::Lost,
                (Some(StopReason::Cancelled), _) => Outcome::Cancelled,
                (_, Some(0)) => Outcome::Success,
                (_, Some(_)) => Outcome::Failed,
                (_, None) => Outcome::Killed,
            };
            rec.reason = match stopped_because {
                Some(StopReason::Timeout) => Some(format!(
                    "timed out after {}",
                    humantime::format_duration(spec.timeout.unwrap_or_default())
                )),
                Some(StopReason::Fenced) => fence_reason.take(),
                Some(StopReason::Cancelled) => Some(format!(
                    "{}: job stopped",
                    replace_reason
                        .take()
                        .unwrap_or_else(|| crate::coordination::CANCELLED.into())
                )),
                Some(StopReason::Replaced) => Some(format!(
                    "{}: job stopped",
                    replace_reason
                        .take()
                        .unwrap_or_else(|| "replaced by a newer run".into())
                )),
                Some(why) => Some(format!("supervisor {}: job stopped", why.word())),
                None => None,
            };
        }
        Err(e) => {
            rec.outcome = Outcome::Lost;
            rec.reason = Some(format!("could not wait for the job: {e}"));
        }
    }
    rec.output_tail = tail.contents();
    rec.output_bytes = Some(tail.total());
    drop(live);
    let ended = Utc::now();
    rec.ended_at = Some(ended);
    rec.duration_ms = Some(duration_ms(rec.started_at, ended));
    (rec, stopped_because)
}

/// Stops a run's live output publisher when the attempt ends.
struct LivePublisher(Option<tokio::task::JoinHandle<()>>);

impl Drop for LivePublisher {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// How a supervised run ended.
pub struct Supervised {
    pub record: RunRecord,
    /// Whether `record` was written (a cluster run's may be refused, its
    /// run already recorded `lost` by a new leader).
    pub written: bool,
    /// A stop signal to the supervisor ended the run (e.g. Ctrl-C on `trigger`).
    pub interrupted: bool,
}

/// SIGTERM and SIGINT to the supervisor: the first asks for a graceful
/// stop, any further one (of either kind) for SIGKILL now. SIGUSR1 is a
/// newer run replacing this one (`overlap = "replace"`, standalone).
/// Why a supervisor stopped its job before the job ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The job's `timeout` passed.
    Timeout,
    /// The run's lease could not be kept: its mark was about to expire.
    Fenced,
    /// A newer run replaces it (`overlap = "replace"`).
    Replaced,
    /// The supervisor got SIGTERM.
    Terminated,
    /// The supervisor got SIGINT.
    Interrupted,
    /// A caller cancelled the run (SIGUSR2, or a cancel key in etcd).
    Cancelled,
}

impl StopReason {
    pub(super) fn of(sig: Sig) -> Self {
        match sig {
            Sig::Int => StopReason::Interrupted,
            Sig::Usr1 => StopReason::Replaced,
            Sig::Usr2 => StopReason::Cancelled,
            Sig::Term | Sig::Hup => StopReason::Terminated,
        }
    }

    /// As the record's reason says it: "supervisor terminated", …
    pub fn word(self) -> &'static str {
        match self {
            StopReason::Timeout => "timeout",
            StopReason::Fenced => "fenced",
            StopReason::Replaced => "replaced",
            StopReason::Terminated => "terminated",
            StopReason::Interrupted => "interrupted",
            StopReason::Cancelled => "cancelled",
        }
    }

    /// A stop the supervisor was asked for (not the job's own doing).
    pub fn is_interruption(self) -> bool {
        matches!(self, StopReason::Terminated | StopReason::Interrupted)
    }
}

/// The signals a supervisor stops on, handled before the job starts so a
/// stop request can never kill the supervisor with the default action and
/// orphan the run.
pub(super) fn stop_signals() -> Signals {
    Signals::listen(&[Sig::Term, Sig::Int, Sig::Usr1, Sig::Usr2]).unwrap_or_default()
}

/// The next stop request.
pub(super) async fn stop_requested(signals: &mut Signals) -> StopReason {
    StopReason::of(signals.next().await)
}

/// Resolves with the reason once a newer run asks this one to stop.
pub(super) async fn replaced(
    requests: &mut tokio::sync::watch::Receiver<Option<String>>,
) -> String {
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
pub(super) async fn terminate<R: RunRecorder>(
    child: &mut tokio::process::Child,
    group: Option<Pid>,
    grace: Duration,
    signals: &mut Signals,
    recorder: &mut R,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::TERM);
    }
    // Those that left the group are asked to stop too, at the same time.
    contain::signal_descendants_outside(group, Signal::TERM);
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

pub(super) fn spawn_pump(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    stream: Stream,
    spec: &RunSpec,
    tail: &Tail,
    echo: Echo,
) -> tokio::task::JoinHandle<()> {
    let (job, run_id) = (spec.key.job.clone(), spec.key.run_id.clone());
    if echo == Echo::Terminal && stream != Stream::Stderr {
        // A reader that went away (`trigger job | head -1`) must not take
        // the run down: the output still goes to the record.
        return tokio::spawn(output::copy(pipe, tail.clone(), |bytes| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes).and_then(|()| out.flush());
        }));
    }
    // In the run's span (see `run_span`), like every event of the run.
    tokio::spawn(tracing::Instrument::in_current_span(pump(
        pipe,
        stream,
        tail.clone(),
        move |stream, line| match (echo, stream) {
            // A stream of its own for stderr goes to stderr.
            (Echo::Terminal, _) => {
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
pub(super) fn job_command(program: &str, args: &[String], spec: &RunSpec) -> Command {
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
    let Some(password) = cfg.cluster.password.as_ref().map(|p| p.expose()) else {
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
pub(super) fn spawn_job(
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
    cmd.env("BGSCHED_JOB", &spec.key.job)
        .env("BGSCHED_RUN_ID", &spec.key.run_id)
        .env(
            "BGSCHED_SCHEDULED_AT",
            spec.key
                .tick
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        )
        .env("BGSCHED_TRIGGER", spec.key.trigger.to_string())
        .env("BGSCHED_INSTANCE", &spec.key.instance)
        .env("BGSCHED_FENCING_TOKEN", spec.key.term.to_string())
        .env("BGSCHED_ATTEMPT", attempt.to_string());
    if let Some(up) = &spec.upstream {
        cmd.env("BGSCHED_UPSTREAM_JOB", &up.job)
            .env("BGSCHED_UPSTREAM_RUN_ID", &up.run_id)
            .env("BGSCHED_UPSTREAM_OUTCOME", up.outcome.to_string());
    }
    if !spec.params.is_empty() {
        for (name, value) in &spec.params {
            cmd.env(crate::config::param_env_name(name), value);
        }
        cmd.env(PARAMS_FILE_ENV, params_path(spec));
    }
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
    let procs = cgroup.and_then(contain::RunCgroup::procs);
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
