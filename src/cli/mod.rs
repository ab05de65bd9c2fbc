//! The command line: a thin layer over the engine. `args` is what clap
//! parses, `error` the one error type and the only place an outcome
//! becomes an exit code, `context` what every command needs (config, job,
//! instance id, backend); then one file per command.

mod args;
mod cancel;
mod check;
mod context;
mod docs;
mod error;
mod history;
mod list;
mod logs;
mod next;
mod pause;
mod run;
mod trigger;

pub use args::{Cli, Command, LogFormat};
pub use error::{exit, CliError};

use clap::Parser;

/// Run the parsed command.
fn dispatch(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Supervise => return Ok(crate::executor::entry::main()?),
        Command::Check => return check::check(&cli),
        Command::Next {
            job,
            count,
            after,
            json,
        } => return next::next(&cli, job, *count as usize, after.as_deref(), *json),
        // Neither reads the config: packagers generate these at build time.
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man { command } => return docs::man(command.as_deref()),
        _ => {}
    }
    crate::observe::log::init(cli.log_format == LogFormat::Json, "info");
    let runtime = tokio::runtime::Runtime::new().map_err(anyhow::Error::from)?;
    runtime.block_on(async {
        match &cli.command {
            Command::Run {
                instance_id,
                http,
                watch_config,
                labels,
            } => run::run(&cli, instance_id.clone(), *http, *watch_config, labels).await,
            Command::List { json } => list::list(&cli, *json).await,
            Command::Trigger {
                job,
                params,
                detach,
                at,
                instance_id,
                timeout,
                on,
                labels,
            } => {
                let params = params.iter().cloned().collect();
                let placement = crate::coordination::Where {
                    on: on.clone(),
                    labels: labels.iter().cloned().collect(),
                    avoid: Vec::new(),
                };
                match at {
                    Some(at) => {
                        trigger::at(&cli, job, params, at, instance_id.clone(), placement).await
                    }
                    None => {
                        let how = trigger::How {
                            detach: *detach,
                            timeout: *timeout,
                            placement,
                        };
                        trigger::trigger(&cli, job, &params, instance_id.clone(), how).await
                    }
                }
            }
            Command::Cancel { run_id, no_wait } => cancel::cancel(&cli, run_id, *no_wait).await,
            Command::Pause {
                job,
                until,
                no_manual,
            } => pause::pause(&cli, job, until.as_deref(), *no_manual).await,
            Command::Resume { job } => pause::resume(&cli, job).await,
            Command::Logs { run_id, follow } => logs::logs(&cli, run_id, *follow).await,
            Command::History {
                job,
                count,
                output,
                json,
            } => history::history(&cli, job.as_deref(), *count, output.as_deref(), *json).await,
            Command::Check
            | Command::Next { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Supervise => unreachable!(),
        }
    })
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
    // A run's supervisor skips clap: it is started at a tick, where every
    // millisecond before its job spawns counts, and takes no arguments.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(crate::executor::SUPERVISE_COMMAND))
    {
        set_sigpipe(libc::SIG_IGN);
        return match crate::executor::entry::main() {
            Ok(()) => exit::OK,
            Err(e) => {
                let e = CliError::from(e);
                e.report();
                e.exit_code()
            }
        };
    }
    set_sigpipe(libc::SIG_DFL);
    let cli = Cli::parse();
    if keeps_running_without_reader(&cli.command) {
        set_sigpipe(libc::SIG_IGN);
    }
    match dispatch(cli) {
        Ok(()) => exit::OK,
        Err(e) => {
            e.report();
            e.exit_code()
        }
    }
}
