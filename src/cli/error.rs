//! The one error type of the commands, and the one place where an outcome
//! becomes an exit code: failures, skips, interrupts and a triggered job's
//! own exit code alike.

use crate::config::ConfigErrors;
use crate::coordination::{CoordError, Outcome, RunRecord};
use crate::executor::entry::EntryError;

/// Exit codes, documented in README and `--help`.
pub mod exit {
    pub const OK: i32 = 0;
    /// An operational error (state directory unusable, I/O failure).
    pub const FAILURE: i32 = 1;
    /// Bad command-line usage (also what clap uses).
    pub const USAGE: i32 = 2;
    /// A command named a job that is not in the config, or `history
    /// --output` a run that is not in the history.
    pub const UNKNOWN_JOB: i32 = 64;
    /// Cluster mode: etcd unreachable, or no leader accepted a trigger (EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// `trigger`: skipped because a run of the job is active (EX_TEMPFAIL).
    pub const SKIPPED: i32 = 75;
    /// Cluster mode: etcd refused the user or password (EX_NOPERM).
    pub const AUTH: i32 = 77;
    /// The config file is invalid (EX_CONFIG).
    pub const CONFIG: i32 = 78;
    /// `run` was stopped by a second SIGINT/SIGTERM and killed running jobs;
    /// `trigger` was interrupted.
    pub const FORCED_STOP: i32 = 130;
}

/// Errors that end a command, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    UnknownJob(String),
    #[error("{0}")]
    UnknownRun(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    AuthFailed(String),
    #[error("cannot serve http on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Coordination(crate::coordination::CoordError),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
    /// `trigger`: skipped under the job's overlap policy; says why.
    #[error("{0}")]
    Skipped(String),
    /// `run` stopped by a second signal, `trigger` interrupted; already said.
    #[error("")]
    Interrupted,
    /// `trigger`: the job ran and did not succeed; its run was already
    /// summed up. The exit code follows shell conventions.
    #[error("")]
    RunEnded(Outcome, Option<i32>, Option<i32>),
}

/// A backend error, with a refused etcd login as its own kind.
impl From<CoordError> for CliError {
    fn from(e: CoordError) -> CliError {
        match e {
            e @ CoordError::Auth { .. } => CliError::AuthFailed(e.to_string()),
            CoordError::Unreachable(why) => CliError::Unavailable(why),
            e => CliError::Coordination(e),
        }
    }
}

/// A supervisor started by hand or with a bad spec is a usage error.
impl From<EntryError> for CliError {
    fn from(e: EntryError) -> CliError {
        match e {
            EntryError::Spec(why) => CliError::Usage(why),
            EntryError::Backend(e) => CliError::from(e),
            e @ EntryError::Runtime(_) => CliError::Other(e.into()),
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Config(_) => exit::CONFIG,
            CliError::UnknownJob(_) | CliError::UnknownRun(_) => exit::UNKNOWN_JOB,
            CliError::Usage(_) => exit::USAGE,
            CliError::Unavailable(_) => exit::UNAVAILABLE,
            CliError::AuthFailed(_) => exit::AUTH,
            CliError::Listen { .. } | CliError::Coordination(_) | CliError::Other(_) => {
                exit::FAILURE
            }
            CliError::Skipped(_) => exit::SKIPPED,
            CliError::Interrupted => exit::FORCED_STOP,
            CliError::RunEnded(outcome, code, signal) => match outcome {
                Outcome::Success => exit::OK,
                Outcome::Failed => code.unwrap_or(exit::FAILURE),
                Outcome::Killed => 128 + signal.unwrap_or(9),
                Outcome::TimedOut => 124,
                Outcome::StartFailed => 127,
                // No member could take it (placement), or none in time.
                Outcome::Missed => exit::UNAVAILABLE,
                Outcome::Lost | Outcome::Running | Outcome::Skipped | Outcome::Unreadable => {
                    exit::FAILURE
                }
                Outcome::Cancelled => exit::FORCED_STOP,
                Outcome::Paused => exit::FAILURE,
            },
        }
    }

    /// A finished run of `trigger`: fine if it succeeded, else its exit
    /// code: the job's own, 128+N for signal N, 124 for a timeout (as
    /// timeout(1)), 127 when it could not start.
    pub fn of_run(record: &RunRecord) -> Result<(), CliError> {
        match record.outcome {
            Outcome::Success => Ok(()),
            outcome => Err(CliError::RunEnded(outcome, record.exit_code, record.signal)),
        }
    }

    /// Say the error on stderr, as the process ends with its exit code.
    pub fn report(&self) {
        match self {
            CliError::Config(errors) => {
                // Located errors lead with file:line:col, as compilers print them.
                eprintln!("{errors}");
                let n = errors.0.len();
                eprintln!(
                    "bgsched: {n} error{} in the config",
                    if n == 1 { "" } else { "s" }
                );
            }
            // Said already, where it happened.
            CliError::Interrupted | CliError::RunEnded(..) => {}
            e => eprintln!("bgsched: {e}"),
        }
    }
}
