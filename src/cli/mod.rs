//! The command line: argument parsing, the commands, and the one place where
//! errors become exit codes.

mod commands;
mod docs;
mod history;
mod list;
mod trigger;

use crate::config::ConfigErrors;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

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

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success (for trigger: the job succeeded)
  1    operational error (state directory, I/O)
  2    bad command-line usage
  64   unknown job name or run id
  69   cluster: etcd unreachable, or no leader accepted the trigger in time
  75   trigger: skipped, a run of the job is still active
  77   cluster: etcd authentication failed (user or password refused)
  78   invalid config file
  124  trigger: the job timed out
  127  trigger: the job's command could not start
  128+N trigger: the job was killed by signal N
  130  run: stopped by a second SIGINT/SIGTERM; trigger: interrupted (Ctrl-C)
  other trigger: the job's own exit code";

#[derive(Debug, Parser)]
#[command(name = "bgsched", version, about = "A cron-style scheduler for background jobs", after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Config file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "BGSCHED_CONFIG",
        default_value = "jobs.toml"
    )]
    pub config: PathBuf,
    /// State directory (overrides the config's [scheduler] state_dir and the per-user default).
    #[arg(long, global = true, env = "BGSCHED_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// etcd endpoints (comma-separated): cluster mode, overriding [cluster] etcd.
    #[arg(
        long,
        global = true,
        env = "BGSCHED_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// Log format on stderr. The level comes from $BGSCHED_LOG (e.g. "debug"), default "info".
    #[arg(long, global = true, env = "BGSCHED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler (one instance per state directory fires; others stand by).
    Run {
        /// Name of this instance in run records and `list` (default: hostname-pid).
        #[arg(long, env = "BGSCHED_INSTANCE_ID")]
        instance_id: Option<String>,
        /// Serve /metrics, /healthz, /readyz and /status on this address
        /// (e.g. 127.0.0.1:9187; port 0 picks a free one), overriding [http] listen.
        #[arg(long, value_name = "ADDR", env = "BGSCHED_HTTP")]
        http: Option<std::net::SocketAddr>,
        /// Reload the config when its file changes (as on SIGHUP).
        #[arg(long)]
        watch_config: bool,
    },
    /// Show each job: schedule, next run, last run and whether it runs now.
    List {
        /// Print JSON (stable; see README).
        #[arg(long)]
        json: bool,
    },
    /// Run a job once now, under its overlap policy, and exit with its exit code.
    Trigger {
        /// The job to run.
        job: String,
        /// Start it in the background, print its run id and return.
        #[arg(long)]
        detach: bool,
        /// Name of this instance in the run record (default: hostname-pid).
        #[arg(long, env = "BGSCHED_INSTANCE_ID")]
        instance_id: Option<String>,
        /// Cluster mode: how long to wait for a leader to accept the request.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Validate the config; print each job's next fire time.
    Check,
    /// Print a job's next fire instants.
    Next {
        /// The job.
        job: String,
        /// How many instants.
        #[arg(short = 'n', default_value_t = 5)]
        count: usize,
        /// Start after this instant (RFC 3339; default now).
        #[arg(long)]
        after: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show recent runs, newest first, or the captured output of one run.
    History {
        /// Only this job's runs (default: every job's, merged by start time).
        job: Option<String>,
        /// How many entries.
        #[arg(short = 'n', default_value_t = 20)]
        count: usize,
        /// Print the output tail kept in this run's record instead of the list.
        #[arg(long, value_name = "RUN_ID", conflicts_with = "count")]
        output: Option<String>,
        /// Print JSON (records without their output; with --output, the whole record).
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: bgsched(1), or bgsched-COMMAND(1).
    Man {
        /// The command whose page to print (default: the overview page).
        command: Option<String>,
    },
    /// Internal: supervise one run (started by the scheduler).
    #[command(name = "__supervise", hide = true)]
    Supervise,
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
}

/// A backend error, with a refused etcd login as its own kind.
impl From<crate::coordination::CoordError> for CliError {
    fn from(e: crate::coordination::CoordError) -> CliError {
        match e {
            e @ crate::coordination::CoordError::Auth { .. } => CliError::AuthFailed(e.to_string()),
            e => CliError::Coordination(e),
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
        }
    }
}

/// Commands that must outlive a closed stdout or stderr: the scheduler and
/// a run's supervisor (whose log pipe may close) and `trigger` (whose job
/// must still end and be recorded; its echo ignores a vanished reader).
fn keeps_running_without_reader(command: &Command) -> bool {
    matches!(
        command,
        Command::Run { .. } | Command::Supervise | Command::Trigger { .. }
    )
}

fn set_sigpipe(action: libc::sighandler_t) {
    // SAFETY: called while the process has one thread, and only swaps the
    // disposition between the two handler-less values.
    unsafe {
        libc::signal(libc::SIGPIPE, action);
    }
}

/// Parse the command line, run the command, and return the exit code.
pub fn main() -> i32 {
    // Rust ignores SIGPIPE, which turns `bgsched list | head -1` into a
    // panic on the next print. A command that only prints ends the way
    // cat(1) does when its reader goes away: killed by SIGPIPE, silently.
    // `--help | head` is such a command too, hence before parsing.
    set_sigpipe(libc::SIG_DFL);
    let cli = Cli::parse();
    if keeps_running_without_reader(&cli.command) {
        set_sigpipe(libc::SIG_IGN);
    }
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(CliError::Config(errors)) => {
            // Located errors lead with file:line:col, as compilers print them.
            eprintln!("{errors}");
            let n = errors.0.len();
            eprintln!(
                "bgsched: {n} error{} in the config",
                if n == 1 { "" } else { "s" }
            );
            exit::CONFIG
        }
        Err(e) => {
            eprintln!("bgsched: {e}");
            e.exit_code()
        }
    }
}
