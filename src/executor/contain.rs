//! Keeping every process a job starts within reach of its supervisor.
//!
//! A process group is not enough: a job's child that calls `setsid`, or a
//! daemon that double-forks, leaves the group and would outlive the run.
//! The supervisor therefore makes itself a *child subreaper*
//! (`PR_SET_CHILD_SUBREAPER`): an orphan anywhere below it is re-parented
//! to it instead of to init, so every descendant of the job, whatever it
//! did to its session or group, is found by walking `/proc` for processes
//! whose parent chain leads to the supervisor. When the run ends (the job's
//! main process exited, timed out or was stopped) they are all killed and
//! reaped.
//!
//! Where a cgroup v2 can be created below the supervisor's own (bgsched
//! runs as root, or systemd delegated its cgroup), each attempt also gets a
//! cgroup of its own, `bgsched-run-<run id>-<attempt>`, which the job
//! enters before it executes (or is born in: see [`enter_ready_cgroup`]); the end of the run then writes
//! `cgroup.kill`, which reaches every process in it at once, and removes
//! the cgroup. The subreaper stays underneath either way: it needs no
//! privilege, works on any Linux, and is what reaps the killed processes.
//! (If the supervisor is killed, its job's main process dies with it
//! through `PR_SET_PDEATHSIG`, and the scheduler kills the job's group.)

use rustix::process::{Pid, Signal};
use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long to keep killing a run's descendants before giving up on one
/// that does not die (a process stuck in uninterruptible sleep).
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// Whether this process supervises one run, so that everything below it
/// belongs to that run. The scheduler, which runs the `on_failure` hook of
/// a run it records `lost`, must never kill its own descendants: those are
/// the other runs.
static SUPERVISOR: AtomicBool = AtomicBool::new(false);

/// Make orphaned descendants of this process its children. Called once
/// per supervisor, before the job starts.
pub fn become_subreaper() {
    SUPERVISOR.store(true, Ordering::Relaxed);
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::warn!(
            "cannot become a child subreaper ({e}): processes that leave the job's group may survive the run"
        );
    }
}

/// `BGSCHED_CGROUP=off` in the scheduler's environment: no cgroups, the
/// subreaper alone (for a host whose cgroup tree something else manages,
/// such as systemd without `Delegate=yes`).
pub const CGROUP_ENV: &str = "BGSCHED_CGROUP";

/// A cgroup v2 of one attempt's own, below the supervisor's cgroup.
pub struct RunCgroup {
    dir: PathBuf,
    /// `<dir>/cgroup.procs`, ready for the child to write itself into
    /// between fork and exec (where nothing may allocate); `None` when the
    /// supervisor is in it already (see [`enter_ready_cgroup`]), so the
    /// job is born inside.
    procs: Option<CString>,
    /// The supervisor's own cgroup, which it returns to once the job runs.
    parent: PathBuf,
    /// Whether the supervisor, born in `dir` with its job, has moved back
    /// to `parent`.
    left: AtomicBool,
}

/// The cgroup a supervisor started ahead of its tick moved itself into
/// while it waited, to be its first attempt's (renamed then).
static READY: std::sync::Mutex<Option<(PathBuf, PathBuf)>> = std::sync::Mutex::new(None);

/// In a supervisor waiting for its run: create a cgroup below its own and
/// move itself into it, so that its job, forked inside, starts without
/// moving in. Moving a process between cgroups waits for the kernel's
/// cgroup lock (about 10 ms on a busy machine), which otherwise falls
/// between the job's fork and its exec; this way it is paid before the
/// tick, and once more when the supervisor moves back out, after the job
/// has started.
///
/// `parent` is the cgroup the supervisor was started in: its scheduler's
/// (see [`scheduler_cgroup`]), so the supervisor need not look it up.
pub fn enter_ready_cgroup(parent: &Path) {
    if std::env::var_os(CGROUP_ENV).is_some_and(|v| v == "off") {
        return;
    }
    let parent = parent.to_path_buf();
    // Named by the supervisor, not the run (unknown yet; cgroup v2 cannot
    // rename): see `ready_cgroup_name`.
    let dir = parent.join(ready_cgroup_name(std::process::id()));
    if std::fs::create_dir(&dir).is_err() {
        return;
    }
    if std::fs::write(dir.join("cgroup.procs"), "0").is_err() {
        let _ = std::fs::remove_dir(&dir);
        return;
    }
    *READY.lock().expect("ready cgroup lock") = Some((dir, parent));
}

impl RunCgroup {
    /// Create the attempt's cgroup, or say (at debug level) why the job
    /// is contained by the subreaper alone.
    pub fn create(run_id: &str, attempt: u32) -> Option<RunCgroup> {
        let name = format!("bgsched-run-{run_id}-{attempt}");
        let ready = READY.lock().expect("ready cgroup lock").take();
        if let Some((dir, parent)) = ready {
            if attempt == 1 {
                tracing::debug!(cgroup = %dir.display(), "containing the job's descendants with a child subreaper and a cgroup (entered ahead of the tick)");
                return Some(RunCgroup {
                    dir,
                    procs: None,
                    parent,
                    left: AtomicBool::new(false),
                });
            }
            leave(&parent);
            let _ = std::fs::remove_dir(&dir);
        }
        let wanted = if std::env::var_os(CGROUP_ENV).is_some_and(|v| v == "off") {
            Err(format!("{CGROUP_ENV}=off"))
        } else {
            Ok(())
        };
        match wanted.and_then(|()| own_cgroup_dir()).and_then(|parent| {
            let dir = parent.join(&name);
            std::fs::create_dir(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            Ok((dir, parent))
        }) {
            Ok((dir, parent)) => {
                tracing::debug!(cgroup = %dir.display(), "containing the job's descendants with a child subreaper and a cgroup");
                let procs = CString::new(
                    dir.join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .ok()?;
                Some(RunCgroup {
                    dir,
                    procs: Some(procs),
                    parent,
                    left: AtomicBool::new(false),
                })
            }
            Err(why) => {
                tracing::debug!(
                    "containing the job's descendants with a child subreaper (no cgroup: {why})"
                );
                None
            }
        }
    }

    /// The path a child hands to [`enter_cgroup`], unless it is born in
    /// the cgroup.
    pub fn procs(&self) -> Option<CString> {
        self.procs.clone()
    }

    /// Once the job runs: a supervisor whose job was born in the cgroup
    /// moves back to its own, so that the end of the run kills the job's
    /// processes and not the supervisor.
    pub fn leave(&self) {
        if self.procs.is_none() && leave(&self.parent) {
            self.left.store(true, Ordering::Relaxed);
        }
    }

    /// Kill everything in the cgroup at once (kernels before 5.14 have no
    /// `cgroup.kill`; the subreaper's walk covers those). Never while the
    /// supervisor is still in it (it could not move back out).
    pub fn kill(&self) {
        if self.procs.is_none() && !self.left.load(Ordering::Relaxed) {
            return;
        }
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
    }

    /// Remove the cgroup once it is empty (after [`kill_descendants`]).
    pub fn remove(self) {
        match std::fs::remove_dir(&self.dir) {
            // Swept already: empty and over a minute old when the sweep came.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(cgroup = %self.dir.display(), "cannot remove the run's cgroup: {e}");
            }
            Ok(()) => {}
        }
    }
}

/// In a supervisor that waited for a run that never came: leave and remove
/// the cgroup it entered.
pub fn discard_ready_cgroup() {
    if let Some((dir, parent)) = READY.lock().expect("ready cgroup lock").take() {
        leave(&parent);
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The first attempt's cgroup of a run handed to supervisor `pid` that
/// was started ahead of its tick.
fn ready_cgroup_name(pid: u32) -> String {
    format!("bgsched-run-sup{pid}-1")
}

/// Move this process into the cgroup `parent`; whether it moved.
fn leave(parent: &Path) -> bool {
    match std::fs::write(parent.join("cgroup.procs"), "0") {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(cgroup = %parent.display(), "cannot move the supervisor back to its cgroup: {e}");
            false
        }
    }
}

/// The scheduler's own cgroup, which the supervisors it starts are born
/// in; looked up once (a scheduler does not move), `None` without cgroup v2.
pub fn scheduler_cgroup() -> Option<&'static Path> {
    static OWN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| own_cgroup_dir().ok()).as_deref()
}

/// A run cgroup older than this that is still there was left behind (its
/// supervisor and scheduler were both killed before removing it).
const STALE: Duration = Duration::from_secs(60);

/// Whether this process last swept (see [`sweep_stale_cgroups`]) a minute
/// ago or more, or never; if so, it counts as sweeping now.
pub fn sweep_due() -> bool {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().expect("sweep lock");
    if last.is_some_and(|t| t.elapsed() < STALE) {
        return false;
    }
    *last = Some(std::time::Instant::now());
    true
}

/// In a process that starts supervisors (the scheduler, at most once a
/// minute: see [`sweep_due`]; `bgsched trigger`): remove the run cgroups
/// left behind below its own cgroup. Not in each supervisor: the sweep
/// lists every run cgroup there, so 1,000 runs due together would each
/// list 1,000.
pub fn sweep_stale_cgroups() {
    if std::env::var_os(CGROUP_ENV).is_some_and(|v| v == "off") {
        return;
    }
    if let Ok(parent) = own_cgroup_dir() {
        remove_stale(&parent);
    }
}

/// Remove the empty run cgroups left behind below `parent`. One in use is
/// never removed: the kernel refuses to remove a populated cgroup, and a
/// new one is younger than [`STALE`].
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("bgsched-run-")
        {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if old {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// In the scheduler, after a supervisor died without cleaning up: kill
/// what is left in its run's cgroups (made below the cgroup the supervisor
/// inherited from this process) and remove them once empty.
pub async fn kill_run_cgroups(run_id: &str, supervisor_pid: u32) {
    let Some(parent) = scheduler_cgroup() else {
        return;
    };
    let prefix = format!("bgsched-run-{run_id}-");
    let ready = ready_cgroup_name(supervisor_pid);
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        if !dir.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            n.starts_with(&prefix) || n == ready
        }) {
            continue;
        }
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        tracing::warn!(run_id, cgroup = %dir.display(), "supervisor died: killed what was left in its run's cgroup");
        // The killed processes are init's to reap; the cgroup can go once
        // they are gone, which takes a moment.
        let deadline = tokio::time::Instant::now() + KILL_PATIENCE;
        while std::fs::remove_dir(&dir).is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// In a child, between fork and exec: move this process into the cgroup
/// whose `cgroup.procs` is `procs`. Allocates nothing. A failure leaves the
/// job to the subreaper alone.
pub fn enter_cgroup(procs: &std::ffi::CStr) {
    use rustix::fs::{Mode, OFlags};
    if let Ok(fd) = rustix::fs::open(procs, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
        let _ = rustix::io::write(&fd, b"0");
    }
}

/// The directory of this process's cgroup in the cgroup v2 hierarchy.
fn own_cgroup_dir() -> Result<PathBuf, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 hierarchy")?;
    let (root, mountpoint) = cgroup2_mount()?;
    let rel = Path::new(rel);
    let rel = rel.strip_prefix(root).unwrap_or(rel);
    let dir = mountpoint.join(rel.strip_prefix("/").unwrap_or(rel));
    if !dir.join("cgroup.procs").exists() {
        return Err(format!("{} is not a cgroup", dir.display()));
    }
    Ok(dir)
}

/// Where the cgroup v2 hierarchy is mounted: its root as this process
/// sees it, and the mount point. Found once per process: the kernel builds
/// `/proc/self/mountinfo` afresh on every read, which cost a supervisor
/// about 7 % of its CPU when it read it at every cgroup step of its run.
fn cgroup2_mount() -> Result<&'static (PathBuf, PathBuf), String> {
    static MOUNT: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    if let Some(found) = MOUNT.get() {
        return Ok(found);
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // `id parent dev root mountpoint options ... - fstype source options`
    let found = mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2").then_some(())?;
            let mut f = left.split_whitespace();
            Some((PathBuf::from(f.nth(3)?), PathBuf::from(f.next()?)))
        })
        .ok_or("cgroup2 is not mounted")?;
    Ok(MOUNT.get_or_init(|| found))
}

/// One process in `/proc`: its parent, its process group and whether it
/// is a zombie.
struct Proc {
    ppid: i32,
    pgrp: i32,
    zombie: bool,
}

fn processes() -> HashMap<i32, Proc> {
    let mut all = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let (Some(ppid), Some(pgrp)) = (
            fields.next().and_then(|p| p.parse().ok()),
            fields.next().and_then(|p| p.parse().ok()),
        ) else {
            continue;
        };
        all.insert(
            pid,
            Proc {
                ppid,
                pgrp,
                zombie: state == "Z",
            },
        );
    }
    all
}

/// Every process below this one: (pid, process group, is a zombie).
fn descendants() -> Vec<(i32, i32, bool)> {
    let me = std::process::id() as i32;
    let all = processes();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, p) in &all {
        children.entry(p.ppid).or_default().push(*pid);
    }
    let mut found = Vec::new();
    let mut todo = vec![me];
    while let Some(parent) = todo.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            found.push((*child, all[child].pgrp, all[child].zombie));
            todo.push(*child);
        }
    }
    found
}

/// Whether this process has any child, living or a zombie, without
/// reaping one (the job's own process may be waited for elsewhere). A
/// subreaper with no child has no descendant at all: an orphan below it is
/// re-parented to it, so every living descendant has a chain of living
/// parents up to one of its children. That spares the scan of all of
/// `/proc` in the usual case, where the job left nothing behind; the scan
/// costs O(processes on the host) per run, and with 1,000 runs due together
/// it was most of the machine's CPU.
fn has_children() -> bool {
    use rustix::process::{WaitId, WaitIdOptions};
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        match rustix::process::waitid(WaitId::All, options) {
            Err(rustix::io::Errno::CHILD) => return false,
            Err(rustix::io::Errno::INTR) => continue,
            // A child, or an error that proves nothing: scan to be sure.
            _ => return true,
        }
    }
}

/// Send `signal` to every living descendant (in a supervisor only).
pub fn signal_descendants(signal: Signal) {
    signal_descendants_outside(None, signal);
}

/// Send `signal` to every living descendant outside process group `group`
/// (all of them for `None`; in a supervisor only). The group had its own
/// signal: a second SIGTERM reads to many programs as "stop now", and would
/// also reach what the job's handler of the first has just started.
pub fn signal_descendants_outside(group: Option<Pid>, signal: Signal) {
    if !SUPERVISOR.load(Ordering::Relaxed) || !has_children() {
        return;
    }
    let group = group.map(Pid::as_raw_pid);
    for (pid, pgrp, zombie) in descendants() {
        if zombie || Some(pgrp) == group {
            continue;
        }
        if let Some(pid) = Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// Kill every descendant of this process and reap them all, so that none
/// survives the run and none is left a zombie. Only call this when no child
/// is being waited for elsewhere (the job's main process is reaped). Does
/// nothing outside a supervisor.
pub async fn kill_descendants() {
    if !SUPERVISOR.load(Ordering::Relaxed) {
        return;
    }
    let deadline = tokio::time::Instant::now() + KILL_PATIENCE;
    loop {
        // SIGKILL stops a process from forking further, so each round can
        // only find fewer new ones.
        signal_descendants(Signal::KILL);
        while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
        if !has_children() {
            return;
        }
        let left = descendants();
        if left.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let pids: Vec<String> = left.iter().map(|(p, _, _)| p.to_string()).collect();
            tracing::warn!(
                "processes of the job still there after SIGKILL for {}s: {}",
                KILL_PATIENCE.as_secs(),
                pids.join(" ")
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
