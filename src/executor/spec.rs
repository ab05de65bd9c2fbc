//! The run spec a scheduler hands its supervisor, and handing it over: the
//! re-exec, the inherited descriptor, and what the supervisor holds.

use super::*;

/// The environment variable that names the descriptor a supervisor reads
/// its [`RunSpec`] from. The spec itself does not travel in the
/// environment: it holds the etcd password, and a process's environment is
/// readable in `/proc/<pid>/environ` and inherited by whatever it starts.
pub const SPEC_FD_ENV: &str = "BGSCHED_SUPERVISE_SPEC_FD";

/// Everything a supervisor needs to run one job once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    #[serde(flatten)]
    pub key: RunKey,
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
    /// A manual run's parameters, already checked against the job's
    /// declarations (`Job::resolve_params`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// The job's concurrency group and the place the claim took in it.
    #[serde(default)]
    pub group: Option<GroupSeat>,
    /// Descriptor number of the inherited lock of that place (standalone).
    #[serde(default)]
    pub seat_fd: Option<i32>,
    /// The jobs whose `after` names this one: their runs go out with this
    /// run's record.
    #[serde(default)]
    pub dependents: Vec<crate::model::Dependent>,
    /// The upstream run whose end started this one (`after`).
    #[serde(default)]
    pub upstream: Option<crate::model::Upstream>,
    /// The attempt it starts at (a retry of a run lost on a member goes
    /// on counting); 0 and 1 both mean the first.
    #[serde(default)]
    pub first_attempt: u32,
}

/// Where a supervisor's stdout (its pid report) and stderr (its log) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisorOutput {
    /// The scheduler's: it reads the pid report; the log joins its own.
    Scheduler,
    /// A run the API started in `bgsched run`: the log joins the
    /// scheduler's, nobody reads a pid report.
    LogOnly,
    /// `trigger --detach`: nothing. Nobody is left to read them, and
    /// holding the caller's pipes open would keep whoever reads them
    /// waiting for the whole run.
    Nothing,
}

/// Start a background supervisor for `spec`, handing it `hold`. The
/// supervisor lives in its own process group, so a Ctrl-C meant for the
/// scheduler's terminal does not reach it; the scheduler forwards shutdown
/// itself.
pub fn spawn_supervisor(
    mut spec: RunSpec,
    hold: Hold,
    seat: Option<Seat>,
    output: SupervisorOutput,
) -> std::io::Result<tokio::process::Child> {
    let lock = take_hold(&mut spec, hold)?;
    let seat = seat_lock(seat)?;
    spec.report_pid = output == SupervisorOutput::Scheduler;
    reexec(spec, lock, seat, output)
}

/// The lock of a group place to hand over (standalone), above the
/// standard descriptors as [`take_hold`]'s.
pub(super) fn seat_lock(seat: Option<Seat>) -> std::io::Result<Option<OwnedFd>> {
    use std::os::fd::AsRawFd;
    Ok(match seat.and_then(|s| s.lock) {
        Some(fd) if fd.as_raw_fd() <= 2 => Some(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?),
        other => other,
    })
}

/// Move `hold` into `spec` (a lease) or out as the descriptor to hand
/// over (a lock), above the standard descriptors: a lock that landed on
/// 0-2 (a scheduler started with them closed) would be lost to the spawn,
/// which replaces those.
pub(super) fn take_hold(spec: &mut RunSpec, hold: Hold) -> std::io::Result<Option<OwnedFd>> {
    use std::os::fd::AsRawFd;
    Ok(match hold {
        Hold::None => None,
        Hold::Lease { id, granted_at } => {
            spec.lease = Some((id, granted_at));
            None
        }
        Hold::Lock(fd) if fd.as_raw_fd() <= 2 => Some(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?),
        Hold::Lock(fd) => Some(fd),
    })
}

/// The running binary itself, even if the file was replaced or removed
/// since (a package upgrade): current_exe() would then name a path that no
/// longer exists.
pub(super) fn own_exe() -> std::io::Result<PathBuf> {
    if std::path::Path::new("/proc/self/exe").exists() {
        Ok(PathBuf::from("/proc/self/exe"))
    } else {
        std::env::current_exe()
    }
}

/// Re-execute `bgsched` as the supervisor of `spec`, the lock inherited.
pub(super) fn reexec(
    mut spec: RunSpec,
    lock: Option<OwnedFd>,
    seat: Option<OwnedFd>,
    output: SupervisorOutput,
) -> std::io::Result<tokio::process::Child> {
    use std::os::fd::AsRawFd;
    spec.hold_fd = lock.as_ref().map(|fd| fd.as_raw_fd());
    spec.seat_fd = seat.as_ref().map(|fd| fd.as_raw_fd());
    // Inherited by exactly this spawn: cleared in the child only (below),
    // since other threads spawn meanwhile (waiting supervisors, API runs)
    // and must not take the locks along.
    let inherited: Vec<i32> = spec.hold_fd.into_iter().chain(spec.seat_fd).collect();
    let spec_fd = spec_file(&spec)?;
    let spec_raw = spec_fd.as_raw_fd();
    let mut cmd = Command::new(own_exe()?);
    match output {
        SupervisorOutput::Scheduler => cmd.stdout(Stdio::piped()),
        SupervisorOutput::LogOnly => cmd.stdout(Stdio::null()),
        SupervisorOutput::Nothing => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
    };
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
            for raw in &inherited {
                let fd = std::os::fd::BorrowedFd::borrow_raw(*raw);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
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
    drop(seat);
    drop(spec_fd);
    child
}

/// An anonymous in-memory file holding `spec`, read from the start by the
/// supervisor, above the standard descriptors (which the spawn replaces).
pub(super) fn spec_file(spec: &RunSpec) -> std::io::Result<OwnedFd> {
    let json = serde_json::to_string(spec).expect("run spec serializes");
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
    let raw: i32 = std::env::var(SPEC_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            format!("{SUPERVISE_COMMAND} is internal to bgsched ({SPEC_FD_ENV} is not set)")
        })?;
    // SAFETY: single-threaded at this point; no runtime has started yet.
    unsafe { std::env::remove_var(SPEC_FD_ENV) };
    // SAFETY: the descriptor was opened by the scheduler for this process,
    // and nothing else in this process refers to it (`read_spec_from`
    // checks it is the run spec before reading).
    let fd = unsafe {
        use std::os::fd::FromRawFd;
        OwnedFd::from_raw_fd(raw)
    };
    read_spec_from(fd)
}

/// Read the spec from `fd`, which must be the memfd a scheduler made for
/// this process, not whatever else happens to have that number.
pub(super) fn read_spec_from(fd: OwnedFd) -> Result<RunSpec, String> {
    use std::io::{Read, Seek};
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let target = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap_or_default();
    if !target.to_string_lossy().contains("bgsched-run-spec") {
        // Not ours to close.
        std::mem::forget(fd);
        return Err(format!(
            "{SUPERVISE_COMMAND}: descriptor {raw} is not a run spec"
        ));
    }
    let mut file = std::fs::File::from(fd);
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

impl RunSpec {
    pub fn new(
        job: &Job,
        run_id: String,
        tick: DateTime<Utc>,
        trigger: Trigger,
        backend: BackendSpec,
    ) -> Self {
        RunSpec {
            key: RunKey {
                run_id,
                job: job.name.clone(),
                tick,
                trigger,
                instance: String::new(),
                term: 0,
            },
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
            params: BTreeMap::new(),
            group: None,
            seat_fd: None,
            dependents: job.dependents.clone(),
            upstream: None,
            first_attempt: 1,
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

    pub(super) fn record(&self, outcome: Outcome, started_at: DateTime<Utc>) -> RunRecord {
        RunRecord {
            key: self.key.clone(),
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
            output_bytes: None,
            attempt: 1,
            supervisor_pid: Some(std::process::id()),
            params: self.params.clone(),
            upstream: self.upstream.clone(),
            retried: false,
        }
    }
}

/// The span every event about one run is emitted in, in the supervisor
/// and in the scheduler that reaps it.
pub fn run_span(spec: &RunSpec) -> tracing::Span {
    crate::observe::log::span(&spec.key)
}
