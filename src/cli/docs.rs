//! `bgsched completions` and `bgsched man`: generated from the clap
//! definitions, so they cannot drift from what the binary accepts.

use super::{Cli, CliError};
use clap::CommandFactory;
use std::io::Write;

/// The command tree as users see it. The generators are given a copy
/// without hidden subcommands, because clap_complete would offer
/// `__supervise` otherwise; `help` is clap's own and has no page.
fn command() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("bgsched")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
        .subcommand_required(true)
        .disable_help_subcommand(true);
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(after) = full.get_after_help() {
        cmd = cmd.after_help(after.clone());
    }
    cmd.build();
    cmd
}

pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut cmd = command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "bgsched", &mut out);
    write_stdout(&out)
}

/// `bgsched(1)`, or with a command name `bgsched-<command>(1)`, the pages
/// `clap_mangen::generate_to` would write as files.
pub fn man(name: Option<&str>) -> Result<(), CliError> {
    let cmd = command();
    let page = match name {
        None => cmd,
        Some(name) => {
            let visible: Vec<&clap::Command> = cmd.get_subcommands().collect();
            match visible.iter().find(|c| c.get_name() == name) {
                Some(sub) => (*sub).clone(),
                None => {
                    let names: Vec<&str> = visible.iter().map(|c| c.get_name()).collect();
                    return Err(CliError::Usage(format!(
                        "no command \"{name}\"; man pages exist for: {}",
                        names.join(", ")
                    )));
                }
            }
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .source(format!("bgsched {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)
        .map_err(anyhow::Error::from)?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // `bgsched man | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context("writing to stdout").into()),
    }
}
