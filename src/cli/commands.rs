//! The commands behind the parsed command line.

use super::{docs, exit, history, list, trigger, Cli, CliError, Command, LogFormat};
use crate::config::Overlap;
use crate::config::{self, ClusterSettings, Config, Job};
use crate::coordination::etcd::{EtcdConfig, EtcdRecorder, DEFAULT_LEASE_TTL, DEFAULT_PREFIX};
use crate::coordination::{
    BackendSpec, Coordinator, Etcd, HistoryReader, RunRecord, RunRecorder, Standalone,
};
use crate::executor::{self, Echo, RunSpec};
use crate::observe::status::{self, local_rfc3339};
use crate::observe::{http, log, Metrics};
use crate::reload::{self, Reloader};
use crate::scheduler::Scheduler;
use chrono::{DateTime, SecondsFormat, Utc};
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

pub fn dispatch(cli: Cli) -> Result<i32, CliError> {
    match &cli.command {
        Command::Supervise => return supervise(),
        Command::Check => return check(&cli),
        Command::Next {
            job,
            count,
            after,
            json,
        } => return next(&cli, job, *count, after.as_deref(), *json),
        // Neither reads the config: packagers generate these at build time.
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man { command } => return docs::man(command.as_deref()),
        _ => {}
    }
    init_logging(cli.log_format, "info");
    let runtime = tokio::runtime::Runtime::new().map_err(anyhow::Error::from)?;
    runtime.block_on(async {
        match &cli.command {
            Command::Run {
                instance_id,
                http,
                watch_config,
            } => run(&cli, instance_id.clone(), *http, *watch_config).await,
            Command::List { json } => list::list(&cli, *json).await.map(|()| exit::OK),
            Command::Trigger {
                job,
                detach,
                instance_id,
                timeout,
            } => trigger::trigger(&cli, job, *detach, instance_id.clone(), *timeout).await,
            Command::History {
                job,
                count,
                output,
                json,
            } => history::history(&cli, job.as_deref(), *count, output.as_deref(), *json)
                .await
                .map(|()| exit::OK),
            Command::Check
            | Command::Next { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Supervise => unreachable!(),
        }
    })
}

/// Install the tracing subscriber: level from `$BGSCHED_LOG` (default
/// `default_level`), text or one JSON object per line, on stderr.
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("BGSCHED_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // The run spans feed JSON's top-level fields whatever the level; text
    // events already name their run, and a span prefix would repeat it.
    let spans = match format {
        LogFormat::Json => "error",
        LogFormat::Text => "off",
    };
    let filter = match format!("{}={spans}", log::SPAN_TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_stderr())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .fmt_fields(log::span_fields())
            .event_format(log::FlatJson)
            .try_init(),
    };
}

/// Colour only for a person at a terminal: captured output, files and
/// journald get plain text, and a non-empty `$NO_COLOR` (no-color.org)
/// turns it off everywhere.
fn colour_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn load_config(cli: &Cli) -> Result<Config, CliError> {
    Ok(config::load(&cli.config)?)
}

/// Which backend a command talks to.
pub enum BackendChoice {
    /// The state directory: `--state-dir`, then the config's, then the per-user default.
    Standalone(PathBuf),
    Cluster(EtcdConfig),
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
    let Some(cluster) = config.cluster.as_ref() else {
        if cli.etcd.is_empty() {
            let dir = cli
                .state_dir
                .clone()
                .or_else(|| config.scheduler.state_dir.clone())
                .unwrap_or_else(|| Standalone::default_dir(&config.path));
            return Ok(BackendChoice::Standalone(dir));
        }
        // `--etcd` alone: cluster mode with the documented defaults.
        return Ok(BackendChoice::Cluster(EtcdConfig {
            endpoints: cli.etcd.clone(),
            prefix: DEFAULT_PREFIX.to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
            max_clock_skew: crate::coordination::etcd::DEFAULT_MAX_CLOCK_SKEW,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            history_limit: config.scheduler.history_limit,
        }));
    };
    let cluster: ClusterSettings = cluster.clone();
    Ok(BackendChoice::Cluster(EtcdConfig {
        endpoints: if cli.etcd.is_empty() {
            cluster.endpoints
        } else {
            cli.etcd.clone()
        },
        prefix: cluster.prefix,
        lease_ttl: cluster.lease_ttl,
        max_clock_skew: cluster.max_clock_skew,
        ca_file: cluster.ca_file,
        cert_file: cluster.cert_file,
        key_file: cluster.key_file,
        user: cluster.user,
        password: cluster.password.map(|p| p.expose().to_string()),
        history_limit: config.scheduler.history_limit,
    }))
}

/// A connected backend, for the commands that read or write state.
pub enum Backend {
    Standalone(Standalone),
    Cluster(Box<Etcd>),
}

impl Backend {
    pub fn status_source(&self) -> status::Source<'_> {
        match self {
            Backend::Standalone(s) => status::Source::Standalone(s),
            Backend::Cluster(e) => status::Source::Cluster(e),
        }
    }

    /// Open the backend for a short-lived command; etcd must answer now.
    pub async fn open(cli: &Cli, config: &Config) -> Result<Backend, CliError> {
        match backend_config(cli, config)? {
            BackendChoice::Standalone(dir) => Ok(Backend::Standalone(Standalone::open(
                &dir,
                config.scheduler.history_limit,
            )?)),
            BackendChoice::Cluster(cfg) => {
                let endpoints = cfg.endpoints.join(",");
                Etcd::connect(cfg)
                    .await
                    .map(|e| Backend::Cluster(Box::new(e)))
                    .map_err(|e| match e {
                        e @ crate::coordination::CoordError::Auth { .. } => CliError::from(e),
                        // "etcd: " again after "cannot reach etcd" says nothing.
                        crate::coordination::CoordError::Etcd(why) => CliError::Unavailable(
                            format!("cannot reach etcd at {endpoints}: {why}"),
                        ),
                        e => {
                            CliError::Unavailable(format!("cannot reach etcd at {endpoints}: {e}"))
                        }
                    })
            }
        }
    }
}

impl HistoryReader for Backend {
    async fn recent(&self, job: &str, limit: usize) -> crate::coordination::Result<Vec<RunRecord>> {
        match self {
            Backend::Standalone(s) => s.recent(job, limit).await,
            Backend::Cluster(e) => e.recent(job, limit).await,
        }
    }

    async fn active(&self, job: &str) -> crate::coordination::Result<Vec<RunRecord>> {
        match self {
            Backend::Standalone(s) => s.active(job).await,
            Backend::Cluster(e) => e.active(job).await,
        }
    }

    async fn find_run(
        &self,
        jobs: &[&str],
        run_id: &str,
    ) -> crate::coordination::Result<Option<RunRecord>> {
        match self {
            Backend::Standalone(s) => s.find_run(jobs, run_id).await,
            Backend::Cluster(e) => e.find_run(jobs, run_id).await,
        }
    }
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

/// Look a job up by name, suggesting close names when it is not there.
pub fn find_job<'c>(config: &'c Config, name: &str) -> Result<&'c Job, CliError> {
    if let Some(job) = config.jobs.get(name) {
        return Ok(job);
    }
    let mut close: Vec<(f64, &str)> = config
        .jobs
        .keys()
        .map(|k| (strsim::jaro_winkler(k, name), k.as_str()))
        .filter(|(score, _)| *score > 0.7)
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0));
    let hint = match close.as_slice() {
        [] => format!(
            "; jobs in {}: {}",
            config.path.display(),
            config.jobs.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        c => format!(
            "; did you mean {}?",
            c.iter()
                .take(3)
                .map(|(_, n)| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    };
    Err(CliError::UnknownJob(format!(
        "no job named \"{name}\" in {}{hint}",
        config.path.display()
    )))
}

async fn run(
    cli: &Cli,
    instance: Option<String>,
    http_flag: Option<std::net::SocketAddr>,
    watch_config: bool,
) -> Result<i32, CliError> {
    // Installed first: until then, SIGHUP's default action ends the process.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?;
    let (config, hash) = reload::load(&cli.config)?;
    reload::warn_ended(&config);
    let reloader = Reloader::new(config, hash);
    let config = reloader.config();
    let instance = instance_id(instance);
    let metrics = Arc::new(Metrics::new());
    let mut reload_status = reloader.status();
    let reload_metrics = metrics.clone();
    tokio::spawn(async move {
        while reload_status.changed().await.is_ok() {
            let s = reload_status.borrow_and_update().clone();
            reload_metrics.set_config(s.generation, s.last_reload_ok);
        }
    });
    let served = match http_flag.or(config.http.listen) {
        Some(addr) => Some(serve_http(addr, &reloader, &metrics, &instance).await?),
        None => None,
    };
    let serve_backend = |backend| {
        if let Some(served) = &served {
            let _ = served.backend.set(backend);
        }
    };
    // Reload requests; one queued is enough, since a reload reads the
    // newest file anyway.
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let _watcher = if watch_config {
        let watcher = reload::watch_file(&cli.config, reload_tx.clone()).map_err(|e| {
            anyhow::anyhow!("--watch-config: cannot watch {}: {e}", cli.config.display())
        })?;
        Some(watcher)
    } else {
        None
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the config");
            let _ = reload_tx.try_send(reload::Request::Signal);
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let n = *stop_tx.borrow() + 1;
            tracing::info!("{name} received ({n})");
            let _ = stop_tx.send(n);
        }
    });
    let log_json = cli.log_format == LogFormat::Json;
    let forced = match backend_config(cli, &config)? {
        BackendChoice::Standalone(dir) => {
            let state = Arc::new(
                Standalone::open(&dir, config.scheduler.history_limit)?.repairing(metrics.clone()),
            );
            serve_backend(http::Backend::Standalone(state.clone()));
            tracing::info!(
                config = %config.path.display(), state_dir = %dir.display(), instance = %instance,
                "bgsched {} starting (standalone)", env!("CARGO_PKG_VERSION")
            );
            schedule(
                reloader,
                state,
                metrics,
                instance,
                log_json,
                (reload_rx, stop_rx),
            )
            .await?
        }
        BackendChoice::Cluster(cfg) => {
            tracing::info!(
                config = %config.path.display(), etcd = ?cfg.endpoints, prefix = %cfg.prefix, instance = %instance,
                "bgsched {} starting (cluster)", env!("CARGO_PKG_VERSION")
            );
            crate::coordination::channel::record_into(metrics.clone());
            let mut stop_wait = stop_rx.clone();
            let etcd = tokio::select! {
                etcd = Etcd::connect_retrying(cfg) => Arc::new(etcd?),
                _ = stop_wait.changed() => return Ok(exit::OK),
                // Waiting for etcd is this process working as intended.
                () = beat_forever(&metrics) => unreachable!(),
            };
            serve_backend(http::Backend::Cluster(etcd.clone()));
            schedule(
                reloader,
                etcd,
                metrics,
                instance,
                log_json,
                (reload_rx, stop_rx),
            )
            .await?
        }
    };
    tracing::info!("stopped");
    Ok(if forced { exit::FORCED_STOP } else { exit::OK })
}

/// Run the scheduler on `coord` while `reloader` applies each request on
/// `reloads`. Returns whether the stop was forced.
async fn schedule<C: Coordinator>(
    reloader: Reloader,
    coord: Arc<C>,
    metrics: Arc<Metrics>,
    instance: String,
    log_json: bool,
    (reloads, stop): (
        tokio::sync::mpsc::Receiver<reload::Request>,
        tokio::sync::watch::Receiver<u32>,
    ),
) -> Result<bool, CliError> {
    // Before a cluster session starts, so its member key has the hash at once
    // (the session is not there yet: this only stores it).
    let _ = coord.announce_config(&instance, reloader.hash()).await;
    let scheduler = Scheduler::reloadable(
        reloader.subscribe(),
        coord.clone(),
        instance.clone(),
        log_json,
    )
    .with_metrics(metrics);
    tokio::spawn(reloader.serve(coord, instance, reloads));
    Ok(scheduler.run(stop).await?)
}

/// Bind `[http] listen` (or `--http`) and serve the endpoints; the backend
/// is handed to them once it is open.
async fn serve_http(
    addr: std::net::SocketAddr,
    reloader: &Reloader,
    metrics: &Arc<Metrics>,
    instance: &str,
) -> Result<Arc<http::Served>, CliError> {
    let listener = http::Listener::bind(addr)
        .await
        .map_err(|source| CliError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| CliError::Listen { addr, source })?;
    let served = Arc::new(http::Served {
        config: reloader.subscribe(),
        reload: reloader.status(),
        metrics: metrics.clone(),
        instance: instance.to_string(),
        backend: std::sync::OnceLock::new(),
    });
    listener.serve(served.clone());
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz and /status on http://{bound}");
    Ok(served)
}

async fn beat_forever(metrics: &Metrics) {
    let mut beat = tokio::time::interval(crate::scheduler::MAX_SLEEP / 4);
    loop {
        beat.tick().await;
        metrics.beat();
    }
}

fn check(cli: &Cli) -> Result<i32, CliError> {
    let config = load_config(cli)?;
    let now = Utc::now();
    println!(
        "{}: ok, {} job(s)",
        config.path.display(),
        config.jobs.len()
    );
    // Not an error: the file is valid and runs its other jobs.
    for (_, text) in reload::ended_jobs(&config, now) {
        eprintln!("bgsched: warning: {text}");
    }
    for job in config.jobs.values() {
        let next = match (job.enabled, job.schedule.next_after(now)) {
            (false, _) => "disabled".to_string(),
            (true, Some(t)) => format!("next {}", local_rfc3339(job, t)),
            (true, None) => "never fires again".to_string(),
        };
        println!(
            "  {:<24} {:<20} {:<16} {next}",
            job.name,
            job.schedule.as_str(),
            job.timezone.name()
        );
    }
    Ok(exit::OK)
}

fn next(
    cli: &Cli,
    name: &str,
    count: usize,
    after: Option<&str>,
    json: bool,
) -> Result<i32, CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
    let after = match after {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| CliError::Usage(format!("--after {s:?} is not an RFC 3339 instant: {e}")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let mut ticks = Vec::with_capacity(count);
    let mut t = after;
    while ticks.len() < count {
        match job.schedule.next_after(t) {
            Some(n) => {
                ticks.push(n);
                t = n;
            }
            None => break,
        }
    }
    if ticks.len() < count {
        // Fewer lines than asked for must not look like a cut-off listing.
        let last = ticks.last().copied().unwrap_or(after);
        let fields: Vec<&str> = job.schedule.as_str().split_whitespace().collect();
        let why = match fields.as_slice() {
            [_, _, _, _, _, _, years] => format!("its years ({years}) are over"),
            _ => "its schedule matches no later date".to_string(),
        };
        eprintln!(
            "bgsched: job \"{}\" has no fire after {}: {why}",
            job.name,
            local_rfc3339(job, last)
        );
    }
    if json {
        let out: Vec<_> = ticks
            .iter()
            .map(|t| serde_json::json!({ "tick": t.to_rfc3339_opts(SecondsFormat::AutoSi, true), "local": local_rfc3339(job, *t) }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    } else {
        for t in &ticks {
            println!("{}", local_rfc3339(job, *t));
        }
    }
    Ok(exit::OK)
}

/// The hidden `__supervise` command: one run, started by a scheduler.
fn supervise() -> Result<i32, CliError> {
    let spec: RunSpec = executor::read_spec().map_err(CliError::Usage)?;
    let hold = executor::adopt_hold(spec.hold_fd);
    init_logging(
        if spec.log_json {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
        "info",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    let span = log::run_span(&spec);
    runtime.block_on(
        async {
        match &spec.backend {
            BackendSpec::Standalone {
                state_dir,
                history_limit,
            } => {
                let state = Standalone::open(state_dir, *history_limit)?;
                let mut recorder = state.recorder(&spec.job, &spec.run_id);
                let done = executor::supervise(&spec, &mut recorder, hold, Echo::Log).await;
                executor::report::ended(&spec, &done.record, None);
            }
            BackendSpec::Etcd(cfg) => {
                let Some((lease, granted_at)) = spec.lease else {
                    return Err(CliError::Usage(
                        "__supervise: cluster run without a lease".into(),
                    ));
                };
                let stoppable = spec.overlap == Overlap::Replace;
                match EtcdRecorder::start(cfg, &spec.job, &spec.run_id, lease, granted_at, stoppable) {
                    Ok(mut recorder) => {
                        let done = executor::supervise(&spec, &mut recorder, hold, Echo::Log).await;
                        executor::report::ended(&spec, &done.record, recorder.handback());
                    }
                    Err(e) => {
                        // The command was fine; the scheduler was too slow
                        // to hand the run over: the tick is dropped.
                        tracing::error!(job = %spec.job, run_id = %spec.run_id, "not starting the job: {e}");
                        let mut rec = spec.unstarted(format!(
                            "{}: the scheduler could not start the run in time ({e})",
                            crate::scheduler::OVERLOADED
                        ));
                        rec.outcome = crate::coordination::Outcome::Missed;
                        rec.missed_ticks = Some(1);
                        EtcdRecorder::record_unstarted(cfg, &rec).await;
                        executor::report::ended(&spec, &rec, None);
                    }
                }
            }
        }
        Ok(exit::OK)
    }
        .instrument(span),
    )
}
