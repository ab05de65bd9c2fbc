//! What every command needs: the config, the job it names, the instance
//! id, and the backend.

use super::{Cli, CliError};
use crate::config::{self, ClusterSettings, Config, Job};
use crate::coordination::etcd::EtcdConfig;
use crate::coordination::{Backend, BackendChoice, Standalone};

pub fn load_config(cli: &Cli) -> Result<Config, CliError> {
    Ok(config::load(&cli.config)?)
}

/// Cluster mode when the config has `[cluster]` or `--etcd` /
/// `$BGSCHED_ETCD_ENDPOINTS` names endpoints (which then override the
/// config's); standalone otherwise.
pub fn backend_config(cli: &Cli, config: &Config) -> Result<BackendChoice, CliError> {
    if let Some(bad) = cli
        .etcd
        .iter()
        .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
    {
        return Err(CliError::Usage(format!(
            "--etcd endpoint \"{bad}\" must be a URL like \"http://127.0.0.1:2379\""
        )));
    }
    let cluster = match (&config.cluster, cli.etcd.is_empty()) {
        (None, true) => {
            let dir = cli
                .state_dir
                .clone()
                .or_else(|| config.scheduler.state_dir.clone())
                .unwrap_or_else(|| Standalone::default_dir(&config.path));
            return Ok(BackendChoice::Standalone(dir));
        }
        // `--etcd` alone: cluster mode with the documented defaults.
        (None, false) => ClusterSettings::with_defaults(cli.etcd.clone()),
        (Some(cluster), _) => {
            let mut cluster = cluster.clone();
            if !cli.etcd.is_empty() {
                cluster.endpoints = cli.etcd.clone();
            }
            cluster
        }
    };
    Ok(BackendChoice::Cluster(EtcdConfig::from_settings(
        &cluster,
        config.scheduler.history_limit,
    )))
}

/// Open the backend the config and flags choose, for a short-lived
/// command: etcd must answer now.
pub async fn open_backend(cli: &Cli, config: &Config) -> Result<Backend, CliError> {
    Ok(Backend::open(backend_config(cli, config)?, config.scheduler.history_limit).await?)
}

pub fn instance_id(given: Option<String>) -> String {
    given.filter(|s| !s.is_empty()).unwrap_or_else(|| {
        format!(
            "{}-{}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id()
        )
    })
}

/// A run id given on the command line, in its canonical form; exit 2 if it
/// is not one (it becomes part of a path or key).
pub fn run_id_arg(given: &str) -> Result<String, CliError> {
    crate::model::parse_run_id(given).ok_or_else(|| {
        CliError::Usage(format!(
            "{given:?} is not a run id (a UUID such as 019ab6f2-5c1e-7d3a-9f4b-2c8e1a0d6b37, as `bgsched history` shows)"
        ))
    })
}

/// The run of that id, among every job's, or exit 64.
pub fn unknown_run(run_id: &str) -> CliError {
    CliError::UnknownRun(format!(
        "no run {run_id} in the history of any job (pruned, or never existed); `bgsched history` lists recent runs"
    ))
}

/// Look a job up by name, suggesting close names when it is not there.
pub fn find_job<'c>(config: &'c Config, name: &str) -> Result<&'c Job, CliError> {
    config.job_named(name).map_err(CliError::UnknownJob)
}
