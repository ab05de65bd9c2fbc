//! `bgsched run`: the scheduler, with reloads, signals and the endpoints.

use super::context::{backend_config, instance_id};
use super::{Cli, CliError, LogFormat};
use crate::api;
use crate::coordination::{Backend, BackendChoice, Coordinator, Etcd, Standalone};
use crate::notify::Notifier;
use crate::observe::{http, Metrics};
use crate::reload::{self, Reloader};
use crate::scheduler::Scheduler;
use crate::signals::{Sig, Signals};
use std::sync::Arc;

pub async fn run(
    cli: &Cli,
    instance: Option<String>,
    http_flag: Option<std::net::SocketAddr>,
    watch_config: bool,
    labels: &[(String, String)],
) -> Result<(), CliError> {
    // Installed first: until then, SIGHUP's default action ends the process.
    let mut signals =
        Signals::listen(&[Sig::Hup, Sig::Term, Sig::Int]).map_err(anyhow::Error::from)?;
    let (mut config, hash) = reload::load(&cli.config)?;
    // `--label` over `[member] labels`, before anything reads them; every
    // reload merges them again.
    config.member.merge_labels(labels);
    reload::warn_ended(&config);
    let reloader = Reloader::new(config, hash).with_labels(labels.to_vec());
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
    let log_json = cli.log_format == LogFormat::Json;
    let served = match http_flag.or(config.http.listen) {
        Some(addr) => Some(serve_http(addr, &reloader, &metrics, &instance, log_json).await?),
        None => None,
    };
    // The webhooks are sent from here, with the history of `backend` to
    // tell a recovery; the API hands the runs it starts to them too.
    let serve_backend = |backend: Backend| {
        let notifier = Notifier::start(
            reloader.subscribe(),
            backend.clone(),
            metrics.clone(),
            instance.clone(),
        );
        if let Some(served) = &served {
            let _ = served.backend.set(backend);
            let _ = served.notifier.set(notifier.clone());
        }
        notifier
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            match signals.next().await {
                Sig::Hup => {
                    tracing::info!("SIGHUP received: reloading the config");
                    let _ = reload_tx.try_send(reload::Request::Signal);
                }
                sig => {
                    let n = *stop_tx.borrow() + 1;
                    tracing::info!("{} received ({n})", sig.name());
                    let _ = stop_tx.send(n);
                }
            }
        }
    });
    let forced = match backend_config(cli, &config)? {
        BackendChoice::Standalone(dir) => {
            let state = Arc::new(
                Standalone::open(&dir, config.scheduler.history_limit)?.repairing(metrics.clone()),
            );
            let notifier = serve_backend(Backend::Standalone(state.clone()));
            tracing::info!(
                config = %config.path.display(), state_dir = %dir.display(), instance = %instance,
                "bgsched {} starting (standalone)", env!("CARGO_PKG_VERSION")
            );
            schedule(
                reloader,
                state,
                notifier,
                metrics,
                instance,
                log_json,
                (reload_rx, stop_rx),
            )
            .await?
        }
        BackendChoice::Cluster(cfg) => {
            tracing::info!(
                config = %config.path.display(), etcd = ?cfg.cluster.endpoints, prefix = %cfg.cluster.prefix, instance = %instance,
                "bgsched {} starting (cluster)", env!("CARGO_PKG_VERSION")
            );
            crate::coordination::channel::record_into(metrics.clone());
            let mut stop_wait = stop_rx.clone();
            let etcd = tokio::select! {
                etcd = Etcd::connect_retrying(cfg) => Arc::new(etcd?),
                _ = stop_wait.changed() => return Ok(()),
                // Waiting for etcd is this process working as intended.
                () = beat_forever(&metrics) => unreachable!(),
            };
            // Before the session starts, so the member key offers it at once.
            etcd.offer(crate::coordination::etcd::Offer {
                labels: config.member.labels.clone(),
                max_runs: config.member.max_runs,
                leaving: false,
            });
            let notifier = serve_backend(Backend::Cluster(etcd.clone()));
            schedule(
                reloader,
                etcd,
                notifier,
                metrics,
                instance,
                log_json,
                (reload_rx, stop_rx),
            )
            .await?
        }
    };
    tracing::info!("stopped");
    if forced {
        return Err(CliError::Interrupted);
    }
    Ok(())
}

/// How long a stopping scheduler waits for webhook deliveries in flight.
const NOTIFY_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Run the scheduler on `coord` while `reloader` applies each request on
/// `reloads`. Returns whether the stop was forced.
async fn schedule<C: Coordinator>(
    reloader: Reloader,
    coord: Arc<C>,
    notifier: Arc<Notifier>,
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
    .with_metrics(metrics)
    .with_notifier(notifier.clone());
    tokio::spawn(reloader.serve(coord, instance, reloads));
    let forced = scheduler.run(stop).await?;
    if !forced {
        // The notifications of the runs the stop waited for, among others.
        notifier.drain(NOTIFY_DRAIN).await;
    }
    Ok(forced)
}

/// Bind `[http] listen` (or `--http`) and serve the endpoints; the backend
/// is handed to them once it is open.
async fn serve_http(
    addr: std::net::SocketAddr,
    reloader: &Reloader,
    metrics: &Arc<Metrics>,
    instance: &str,
    log_json: bool,
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
        notifier: std::sync::OnceLock::new(),
    });
    let config = reloader.config();
    if config.http.tokens.is_none() && !bound.ip().is_loopback() {
        tracing::warn!(addr = %bound, "the API on a non-loopback address has no [http] tokens_file: anyone who reaches it can read jobs and runs (it is read-only without tokens)");
    }
    let tls = config.http.tls.as_ref().map(|t| t.config.clone());
    let scheme = if tls.is_some() { "https" } else { "http" };
    listener.serve(
        served.clone(),
        api::routes(api::Api::new(served.clone(), log_json)).merge(crate::dashboard::routes()),
        tls,
    );
    tracing::info!(addr = %bound, "serving the dashboard (/), /api/v1, /metrics, /healthz, /readyz and /status on {scheme}://{bound}");
    Ok(served)
}

async fn beat_forever(metrics: &Metrics) {
    let mut beat = tokio::time::interval(crate::model::MAX_SLEEP / 4);
    loop {
        beat.tick().await;
        metrics.beat();
    }
}
