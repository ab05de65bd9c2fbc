//! Supervisors started before their tick. Starting a supervisor at the
//! tick costs its exec and start-up (about 4 ms of a fire that otherwise
//! takes 1), and 1,000 of them due together would queue behind each other
//! on the CPU. So shortly before a tick the scheduler starts as many
//! supervisors as runs are due; each gets through its start-up and waits on
//! a control socket (its stdin). When a claim returns, the claimed run is
//! handed to a waiting supervisor as one message carrying the run spec's
//! memfd and the claim's lock (`SCM_RIGHTS`), and it spawns the job at
//! once. From that message on it is the run's supervisor exactly as a
//! re-executed one is.
//!
//! A waiting supervisor ends when its socket reaches end-of-file: the
//! scheduler closed its end (shutdown, fewer runs wanted) or died, `kill -9`
//! included, since the kernel closes a dead process's descriptors. A run
//! handed over before that is read first (the message precedes the
//! end-of-file), so it still runs and is recorded. That is also why this is
//! not `PR_SET_PDEATHSIG`: it fires when the spawning *thread* exits, and
//! must be unset, racily, the moment a run arrives.

use super::spec::{
    own_exe, read_spec_from, reexec, seat_lock, spec_file, take_hold, SupervisorOutput,
};
use super::{secret_vars, RunSpec, SUPERVISE_COMMAND};
use crate::coordination::{BackendSpec, Hold, Seat};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::process::{Child, Command};

/// The most supervisors kept waiting at once. Each holds about 0.4 MB of
/// its own memory; 1,024 covers a burst of 1,000 runs due together.
pub const MAX_WAITING: usize = 1024;

/// Runs a waiting supervisor is kept for beyond those the next tick
/// wants, so a skipped run's supervisor waits for the next tick instead
/// of exiting and being started again.
const SPARE: usize = 4;

/// Set (to `json` or `text`, the log format) in a supervisor's environment
/// when it is started to wait for its run on stdin.
pub(super) const WAIT_ENV: &str = "BGSCHED_SUPERVISE_WAIT";

/// Set beside [`WAIT_ENV`] when the waiting supervisor is to enter its
/// run's cgroup ahead of the tick (`contain::enter_ready_cgroup`): to the
/// cgroup it is born in, its scheduler's.
pub(super) const CGROUP_AHEAD_ENV: &str = "BGSCHED_SUPERVISE_CGROUP_AHEAD";

/// Up to this many runs due together, their supervisors enter their runs'
/// cgroups ahead of the tick. Moves between cgroups take the kernel's
/// cgroup lock one after another (about 10 ms each here), so for more than
/// this, going in and out again would cost the burst twice what the job's
/// own move in costs.
const CGROUP_AHEAD_MAX: usize = 64;

/// How long before a tick its supervisors start: long enough for `runs`
/// of them to get through start-up on a small machine (about 3 ms of CPU
/// each), at least `floor`.
pub fn lead_time(runs: usize, floor: std::time::Duration) -> std::time::Duration {
    let runs = runs.min(MAX_WAITING) as u32;
    floor.max(std::time::Duration::from_millis(3) * runs)
}

struct Waiting {
    child: Child,
    control: OwnedFd,
}

/// The waiting supervisors of one scheduler.
pub struct WaitingSupervisors {
    waiting: Arc<Mutex<VecDeque<Waiting>>>,
    wanted: Arc<AtomicUsize>,
    filling: Arc<AtomicBool>,
    log_json: bool,
    /// Environment variables a supervisor must not inherit (they hold the
    /// etcd password).
    hidden: Arc<Vec<OsString>>,
}

impl WaitingSupervisors {
    pub fn new(log_json: bool, backend: &BackendSpec) -> Self {
        WaitingSupervisors {
            waiting: Arc::default(),
            wanted: Arc::default(),
            filling: Arc::default(),
            log_json,
            hidden: Arc::new(secret_vars(backend)),
        }
    }

    /// How many supervisors are waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().expect("waiting lock").len()
    }

    /// Have `runs` supervisors waiting (at most [`MAX_WAITING`]), started
    /// in the background; those beyond `runs` and a few spare end.
    pub fn prepare(&self, runs: usize) {
        if super::contain::sweep_due() {
            tokio::task::spawn_blocking(super::contain::sweep_stale_cgroups);
        }
        let runs = runs.min(MAX_WAITING);
        self.wanted.store(runs, Ordering::SeqCst);
        {
            let mut waiting = self.waiting.lock().expect("waiting lock");
            // Dropping one closes its socket: it ends.
            waiting.truncate(runs + SPARE);
            if waiting.len() >= runs {
                return;
            }
        }
        if self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let (waiting, wanted, filling) = (
            self.waiting.clone(),
            self.wanted.clone(),
            self.filling.clone(),
        );
        let (log_json, hidden) = (self.log_json, self.hidden.clone());
        // Off the scheduler's loop: 1,000 spawns take a while.
        // Counted once: supervisors handed runs meanwhile are not replaced
        // (that would compete with the tick they are for).
        let need = runs.saturating_sub(self.waiting());
        tokio::task::spawn_blocking(move || {
            for _ in 0..need {
                if wanted.load(Ordering::SeqCst) == 0 {
                    break;
                }
                match start_waiting(log_json, runs <= CGROUP_AHEAD_MAX, &hidden) {
                    Ok(w) => waiting.lock().expect("waiting lock").push_back(w),
                    Err(e) => {
                        tracing::warn!("could not start a supervisor ahead of its tick (runs start the slower way): {e}");
                        break;
                    }
                }
            }
            filling.store(false, Ordering::SeqCst);
        });
    }

    /// End every waiting supervisor (leadership ended: no tick is ours).
    pub fn clear(&self) {
        self.wanted.store(0, Ordering::SeqCst);
        self.waiting.lock().expect("waiting lock").clear();
    }

    /// Start the supervisor of `spec` with `hold`: hand it to a waiting
    /// supervisor, or, with none alive, re-execute one as
    /// [`super::spawn_supervisor`] does.
    pub fn start(
        &self,
        mut spec: RunSpec,
        hold: Hold,
        seat: Option<Seat>,
    ) -> std::io::Result<Child> {
        let lock = take_hold(&mut spec, hold)?;
        let seat = seat_lock(seat)?;
        spec.report_pid = true;
        loop {
            let next = self.waiting.lock().expect("waiting lock").pop_front();
            let Some(mut w) = next else { break };
            if !matches!(w.child.try_wait(), Ok(None)) {
                continue;
            }
            match hand_over(&w.control, &spec, lock.as_ref(), seat.as_ref()) {
                Ok(()) => return Ok(w.child),
                Err(e) => tracing::debug!("a waiting supervisor did not take its run: {e}"),
            }
        }
        tracing::debug!("no supervisor waiting: starting one the slower way");
        reexec(spec, lock, seat, SupervisorOutput::Scheduler)
    }
}

/// Start one supervisor that waits for its run on a socket as its stdin.
fn start_waiting(
    log_json: bool,
    cgroup_ahead: bool,
    hidden: &[OsString],
) -> std::io::Result<Waiting> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    // Close-on-exec both: the child gets its end as stdin (a copy the
    // spawn makes), and no other spawn inherits either.
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    let mut cmd = Command::new(own_exe()?);
    for name in hidden {
        cmd.env_remove(name);
    }
    if let Some(dir) = super::contain::scheduler_cgroup().filter(|_| cgroup_ahead) {
        cmd.env(CGROUP_AHEAD_ENV, dir);
    }
    let child = cmd
        .arg(SUPERVISE_COMMAND)
        .env(WAIT_ENV, if log_json { "json" } else { "text" })
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    Ok(Waiting {
        child,
        control: ours,
    })
}

/// A run handed to a waiting supervisor: its spec and the claim's locks
/// (the job's, the group place's).
pub(super) type HandedOver = (RunSpec, Option<OwnedFd>, Option<OwnedFd>);

/// Send the run: one byte, with the spec's memfd and the locks attached
/// (the spec says which are there).
fn hand_over(
    control: &OwnedFd,
    spec: &RunSpec,
    lock: Option<&OwnedFd>,
    seat: Option<&OwnedFd>,
) -> std::io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::AsRawFd;
    let mut spec = spec.clone();
    spec.hold_fd = lock.map(AsRawFd::as_raw_fd);
    spec.seat_fd = seat.map(AsRawFd::as_raw_fd);
    let spec_fd = spec_file(&spec)?;
    let mut fds = vec![spec_fd.as_fd()];
    fds.extend(lock.map(|l| l.as_fd()));
    fds.extend(seat.map(|l| l.as_fd()));
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    // NOSIGNAL: a supervisor that died makes this an error, not a SIGPIPE.
    sendmsg(
        control,
        &[IoSlice::new(b"r")],
        &mut cmsg,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// In a waiting supervisor: block until the scheduler hands over a run
/// (its spec and the claim's locks: the job's, the group place's), or
/// `None` once it never will.
pub(super) fn wait_for_run() -> Result<Option<HandedOver>, String> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    // SAFETY: fd 0 is the control socket this process was started with; it
    // stays open until replaced below.
    let control = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(
            control,
            &mut [IoSliceMut::new(&mut byte)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other,
        }
    };
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    match got {
        Ok(r) if r.bytes == 0 => return Ok(None),
        Ok(_) => {}
        // The scheduler is gone mid-message: nothing was handed over.
        Err(rustix::io::Errno::CONNRESET) => return Ok(None),
        Err(e) => return Err(format!("{SUPERVISE_COMMAND}: waiting for a run: {e}")),
    }
    // The job and its hooks read nothing; the socket must not outlive
    // this hand-over in them.
    let null = std::fs::File::open("/dev/null")
        .map_err(|e| format!("{SUPERVISE_COMMAND}: cannot open /dev/null: {e}"))?;
    rustix::stdio::dup2_stdin(&null)
        .map_err(|e| format!("{SUPERVISE_COMMAND}: cannot replace stdin: {e}"))?;
    let mut fds = fds.into_iter();
    let spec_fd = fds
        .next()
        .ok_or_else(|| format!("{SUPERVISE_COMMAND}: a run arrived without its spec"))?;
    let mut spec = read_spec_from(spec_fd)?;
    let lock = spec.hold_fd.and_then(|_| fds.next());
    let seat = spec.seat_fd.and_then(|_| fds.next());
    spec.hold_fd = None;
    spec.seat_fd = None;
    Ok(Some((spec, lock, seat)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// README: "250 ms, or 3 ms per run if that is longer", for at most
    /// 1,024 waiting supervisors.
    #[test]
    fn the_lead_time_grows_with_the_runs_due_up_to_the_cap() {
        let floor = Duration::from_millis(250);
        assert_eq!(lead_time(1, floor), floor);
        assert_eq!(lead_time(50, floor), floor);
        assert_eq!(lead_time(1000, floor), Duration::from_secs(3));
        assert_eq!(
            lead_time(MAX_WAITING, floor),
            Duration::from_millis(3 * 1024)
        );
        assert_eq!(lead_time(100_000, floor), lead_time(MAX_WAITING, floor));
        assert_eq!(MAX_WAITING, 1024);
    }
}
