//! The command line as clap parses it.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success (for trigger: the job succeeded)
  1    operational error (state directory, I/O); cancel: the run had already ended;
       pause/resume: the job is paused already / is not paused
  2    bad command-line usage
  64   unknown job name or run id
  69   cluster: etcd unreachable, or no leader accepted the trigger in time
  75   trigger: skipped, a run of the job is still active, or the job is paused with manual runs off
  77   cluster: etcd authentication failed (user or password refused)
  78   invalid config file
  124  trigger: the job timed out
  127  trigger: the job's command could not start
  128+N trigger: the job was killed by signal N
  130  run: stopped by a second SIGINT/SIGTERM; trigger: interrupted (Ctrl-C), or its run was cancelled
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

/// `NAME=VALUE` of `trigger --param`; the value may hold further `=`.
fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, found {s:?}")),
    }
}

/// `KEY=VALUE` of `run --label`: both plain words, as in `[member] labels`.
fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("expected KEY=VALUE, found {s:?}"));
    };
    for (what, word) in [("name", key), ("value", value)] {
        if let Some(problem) = crate::config::label_problem(word) {
            return Err(format!("label {what} {word:?} {problem}"));
        }
    }
    Ok((key.to_string(), value.to_string()))
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
        /// A label of this replica for jobs' run_on, as KEY=VALUE; repeatable, overrides [member] labels.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
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
        /// A parameter the job declares ([jobs.NAME.params]), as NAME=VALUE; repeatable.
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Start it in the background, print its run id and return.
        #[arg(long)]
        detach: bool,
        /// Run it once at this instant instead (RFC 3339, within a year): print its run id and return.
        #[arg(long, value_name = "RFC3339", conflicts_with = "detach")]
        at: Option<String>,
        /// Name of this instance in the run record (default: hostname-pid).
        #[arg(long, env = "BGSCHED_INSTANCE_ID")]
        instance_id: Option<String>,
        /// Cluster mode: how long to wait for a leader to accept the request.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Cluster mode: run it on this member (its instance id), whatever the job's run_on.
        #[arg(long, value_name = "MEMBER", value_parser = clap::builder::NonEmptyStringValueParser::new())]
        on: Option<String>,
        /// Cluster mode: run it on a member with this label, as KEY=VALUE; repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, conflicts_with = "on")]
        labels: Vec<(String, String)>,
    },
    /// Cancel a run: a running one gets SIGTERM, SIGKILL after the job's kill_grace; one at a later time never starts. Recorded "cancelled".
    Cancel {
        /// The run's id (from `trigger --detach`, `history` or the API).
        run_id: String,
        /// Return once the supervisor was told, without waiting for the record.
        #[arg(long)]
        no_wait: bool,
    },
    /// Pause a job: its ticks do not fire (recorded as one "paused" entry on resume), durably, until resumed.
    Pause {
        /// The job.
        job: String,
        /// Resume by itself at this instant (RFC 3339, within a year).
        #[arg(long)]
        until: Option<String>,
        /// Refuse manual runs (trigger, the API) too while paused.
        #[arg(long)]
        no_manual: bool,
    },
    /// Resume a paused job: its next tick fires; the ticks held back are not caught up.
    Resume {
        /// The job.
        job: String,
    },
    /// Print a run's output; with -f, follow it as the run goes on, until it ends.
    Logs {
        /// The run's id (from `trigger --detach`, `history` or the API).
        run_id: String,
        /// Follow the output of a running run until it ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Validate the config; print each job's next fire time.
    Check,
    /// Print a job's next fire instants.
    Next {
        /// The job.
        job: String,
        /// How many instants (1 to 10,000).
        #[arg(short = 'n', default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        count: u32,
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
    #[command(name = crate::executor::SUPERVISE_COMMAND, hide = true)]
    Supervise,
}
