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
//! A cgroup would do the same and also survive the supervisor itself, but
//! needs a delegated cgroup v2 hierarchy, which most hosts and containers
//! do not hand to an unprivileged service; the subreaper works everywhere
//! on Linux. (If the supervisor is killed, its job's main process dies with
//! it through `PR_SET_PDEATHSIG`, and the scheduler kills the job's group.)

use rustix::process::{Pid, Signal};
use std::collections::HashMap;
use std::time::Duration;

/// How long to keep killing a run's descendants before giving up on one
/// that does not die (a process stuck in uninterruptible sleep).
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// Make orphaned descendants of this process its children. Called once
/// per supervisor, before the job starts.
pub fn become_subreaper() {
    match rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        Ok(()) => tracing::debug!("containing the job's descendants with a child subreaper"),
        Err(e) => tracing::warn!(
            "cannot become a child subreaper ({e}): processes that leave the job's group may survive the run"
        ),
    }
}

/// One process in `/proc`: its parent and whether it is a zombie.
struct Proc {
    ppid: i32,
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
        let Some(ppid) = fields.next().and_then(|p| p.parse().ok()) else {
            continue;
        };
        all.insert(
            pid,
            Proc {
                ppid,
                zombie: state == "Z",
            },
        );
    }
    all
}

/// Every process below this one: (pid, is a zombie).
fn descendants() -> Vec<(i32, bool)> {
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
            found.push((*child, all[child].zombie));
            todo.push(*child);
        }
    }
    found
}

/// Send `signal` to every living descendant.
pub fn signal_descendants(signal: Signal) {
    for (pid, zombie) in descendants() {
        if let (false, Some(pid)) = (zombie, Pid::from_raw(pid)) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// Kill every descendant of this process and reap them all, so that none
/// survives the run and none is left a zombie. Only call this when no child
/// is being waited for elsewhere (the job's main process is reaped).
pub async fn kill_descendants() {
    let deadline = tokio::time::Instant::now() + KILL_PATIENCE;
    loop {
        // SIGKILL stops a process from forking further, so each round can
        // only find fewer new ones.
        signal_descendants(Signal::KILL);
        while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
        let left = descendants();
        if left.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let pids: Vec<String> = left.iter().map(|(p, _)| p.to_string()).collect();
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
