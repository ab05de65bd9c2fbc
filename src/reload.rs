//! Live reload: reading the config file again (on SIGHUP or, with
//! `--watch-config`, when the file changes), validating it, keeping the
//! settings that only a restart can change, announcing the new content hash
//! to the other replicas, and handing the new config to the scheduler.
//!
//! The scheduler sees configs through a `watch` channel and applies each one
//! between ticks (`Scheduler::fire_loop`); [`ReloadStatus`] tells anyone else
//! (metrics, status pages) which generation runs and whether the last reload
//! worked.

use crate::config::{self, Config, ConfigErrors};
use crate::coordination::Coordinator;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Hex digits of the SHA-256 shown as a config's hash: enough to tell
/// versions of one file apart, short enough for a `list` line.
const HASH_LEN: usize = 12;
/// File events closer together than this are one change: editors write a
/// file in several steps, and a half-written file must not be reloaded.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// The content hash of a config file's bytes (shortened SHA-256 hex).
pub fn config_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(HASH_LEN);
    hex
}

/// Read, hash and validate the config file at `path`.
pub fn load(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let bytes = config::read(path)?;
    let hash = config_hash(&bytes);
    Ok((config::load_str(path, &bytes)?, hash))
}

/// Each enabled job of `config` whose schedule has ended by `now` (its
/// years or its active range are over), with how to say so. Such a job is loaded, not refused
/// (see `Schedule::parse`), but a user must hear that it never fires again.
pub fn ended_jobs(config: &Config, now: DateTime<Utc>) -> Vec<(&str, String)> {
    config
        .jobs
        .values()
        .filter(|job| job.enabled)
        .filter_map(|job| {
            let last = job.schedule.ended(now)?;
            let last = crate::observe::log::local_rfc3339(job, last);
            let text = match job.schedule.active().until.filter(|u| *u <= now) {
                Some(until) => format!(
                    "job \"{}\": its active range ended at {} (active_until): it has no tick after its last, {last}",
                    job.name,
                    crate::observe::log::local_rfc3339(job, until),
                ),
                None => format!(
                    "job \"{}\": schedule \"{}\" has ended: its last fire was {last}; it never fires again",
                    job.name, job.schedule,
                ),
            };
            Some((job.name.as_str(), text))
        })
        .collect()
}

/// One WARN per job of `config` whose schedule has ended.
pub fn warn_ended(config: &Config) {
    for (job, text) in ended_jobs(config, Utc::now()) {
        tracing::warn!(job = %job, "{text}");
    }
}

/// Which config runs, for metrics and status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadStatus {
    /// 1 for the config loaded at start, +1 for every reload that changed it.
    pub generation: u64,
    /// Whether the newest reload attempt was accepted (true until one fails).
    pub last_reload_ok: bool,
    /// The content hash of the config in use.
    pub config_hash: String,
    /// When the newest reload attempt ended, if there was one.
    pub last_reload_at: Option<DateTime<Utc>>,
}

/// What a reload attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A new config is in use.
    Applied,
    /// The file's content is the one already in use.
    Unchanged,
    /// The file is invalid (every error was logged); the old config stays.
    Rejected,
}

/// Owns the config in use and publishes every accepted new one.
pub struct Reloader {
    path: PathBuf,
    hash: String,
    /// `run --label`: merged over each reloaded file's `[member] labels`,
    /// as over the first one's, so that only a change in the file counts.
    labels: Vec<(String, String)>,
    config: watch::Sender<Arc<Config>>,
    status: watch::Sender<ReloadStatus>,
}

impl Reloader {
    /// Start at generation 1 with the config loaded at start-up.
    pub fn new(config: Config, hash: String) -> Self {
        let status = ReloadStatus {
            generation: 1,
            last_reload_ok: true,
            config_hash: hash.clone(),
            last_reload_at: None,
        };
        Reloader {
            path: config.path.clone(),
            hash,
            labels: Vec::new(),
            config: watch::channel(Arc::new(config)).0,
            status: watch::channel(status).0,
        }
    }

    /// The `run --label` labels, already merged into the config given to
    /// [`Reloader::new`], to merge into every reloaded one too.
    pub fn with_labels(mut self, labels: Vec<(String, String)>) -> Self {
        self.labels = labels;
        self
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Every config accepted from now on (the current one first).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    /// Generation, last reload result and hash, kept current.
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.subscribe()
    }

    /// Read the file again and, if it is valid and different, announce
    /// its hash through `coord` and publish it. `quiet` skips the log line
    /// of an unchanged file (the watcher sees many unrelated events).
    pub async fn reload<C: Coordinator>(
        &mut self,
        coord: &C,
        instance: &str,
        why: &str,
        quiet: bool,
    ) -> Reloaded {
        let (new, hash) = match load(&self.path) {
            Ok(loaded) => loaded,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    errors = errors.0.len(),
                    reason = why,
                    "config reload rejected: keeping the config in use (hash {})",
                    self.hash
                );
                self.status.send_modify(|s| {
                    s.last_reload_ok = false;
                    s.last_reload_at = Some(Utc::now());
                });
                return Reloaded::Rejected;
            }
        };
        if hash == self.hash {
            if !quiet {
                tracing::info!(reason = why, hash = %hash, "config reload: file unchanged");
            }
            self.status.send_modify(|s| {
                s.last_reload_ok = true;
                s.last_reload_at = Some(Utc::now());
            });
            return Reloaded::Unchanged;
        }
        let old = self.config();
        let (new, _) = self.keep_restart_only(&old, new);
        log_changes(&old, &new);
        warn_ended(&new);
        // The other replicas and `list` learn the hash before this instance
        // fires from the new config. A failure here is etcd trouble, during
        // which no claim could succeed either, so waiting costs nothing.
        let mut delay = Duration::from_millis(200);
        while let Err(e) = coord.announce_config(instance, &hash).await {
            tracing::warn!(
                "could not announce config {hash} yet ({e}); retrying in {}",
                crate::observe::log::duration(delay)
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        self.hash = hash.clone();
        self.config.send_replace(Arc::new(new));
        self.status.send_modify(|s| {
            s.generation += 1;
            s.last_reload_ok = true;
            s.config_hash = hash.clone();
            s.last_reload_at = Some(Utc::now());
        });
        let generation = self.status.borrow().generation;
        tracing::info!(reason = why, hash = %hash, generation, "config reloaded");
        Reloaded::Applied
    }

    /// `new` as read from the file, with the `run --label` labels merged in
    /// and the restart-only settings of `old` put back; also what was put
    /// back (each logged as a warning).
    fn keep_restart_only(&self, old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
        new.member.merge_labels(&self.labels);
        keep_restart_only(old, new)
    }

    /// Reload for each request on `requests` (its text says why: "SIGHUP",
    /// "config file changed") until the channel closes.
    pub async fn serve<C: Coordinator>(
        mut self,
        coord: Arc<C>,
        instance: String,
        mut requests: mpsc::Receiver<Request>,
    ) {
        while let Some(req) = requests.recv().await {
            let quiet = req == Request::FileChanged;
            self.reload(&*coord, &instance, req.as_str(), quiet).await;
        }
    }
}

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Signal,
    FileChanged,
}

impl Request {
    fn as_str(self) -> &'static str {
        match self {
            Request::Signal => "SIGHUP",
            Request::FileChanged => "config file changed",
        }
    }
}

/// `new`, with the settings that cannot change while running put back to
/// their values in `old`, and a warning for each that differs: the backend
/// (state directory, etcd connection, history retention handed to every
/// supervisor) is opened and the HTTP listener bound once at start. Also
/// returns what differed.
fn keep_restart_only(old: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let mut kept = Vec::new();
    let mut warn = |what: &'static str| {
        tracing::warn!("config reload: {what} changed; this needs a restart, keeping the value in use until then");
        kept.push(what);
    };
    if new.cluster != old.cluster {
        let what = match (&old.cluster, &new.cluster) {
            (None, Some(_)) => "a [cluster] table was added",
            (Some(_), None) => "the [cluster] table was removed",
            _ => "[cluster]",
        };
        warn(what);
        new.cluster = old.cluster.clone();
    }
    if new.http != old.http {
        warn("[http] listen");
        new.http = old.http.clone();
    }
    if new.scheduler.state_dir != old.scheduler.state_dir {
        warn("[scheduler] state_dir");
        new.scheduler.state_dir = old.scheduler.state_dir.clone();
    }
    if new.scheduler.history_limit != old.scheduler.history_limit {
        warn("[scheduler] history");
        new.scheduler.history_limit = old.scheduler.history_limit;
    }
    // What this replica offers placement, with `run --label` merged in.
    if new.member != old.member {
        warn("[member]");
        new.member = old.member.clone();
    }
    (new, kept)
}

/// One line per added, removed and changed job, so the log says what a
/// reload did.
fn log_changes(old: &Config, new: &Config) {
    for (name, job) in &new.jobs {
        match old.jobs.get(name) {
            None => {
                tracing::info!(job = %name, schedule = %job.schedule, "config reload: job added")
            }
            Some(was) if was.schedule != job.schedule || was.timezone != job.timezone => {
                tracing::info!(job = %name, from = %was.schedule, to = %job.schedule, timezone = %job.timezone.name(), "config reload: schedule changed, takes effect from the next tick");
            }
            Some(was) if was != job => {
                tracing::info!(job = %name, "config reload: job changed, applies to its next run")
            }
            Some(_) => {}
        }
    }
    for (name, was) in old.jobs.iter().filter(|(n, _)| !new.jobs.contains_key(*n)) {
        if was.schedule.is_continuous() {
            tracing::info!(job = %name, "config reload: service removed; its running instance is stopped");
        } else {
            tracing::info!(job = %name, "config reload: job removed; a running run of it finishes");
        }
    }
    if old.notify != new.notify {
        tracing::info!(
            webhooks = new.notify.webhooks.len(),
            "config reload: [notify] changed, applies from the next notification"
        );
    }
}

/// Watch the config file for changes: its directory (editors replace the
/// file by renaming over it, Kubernetes swaps a `..data` symlink in a
/// ConfigMap volume) and, if the path is a symlink, its target's directory.
/// Each burst of events becomes one [`Request::FileChanged`] after
/// [`DEBOUNCE`]. The watcher lives as long as the returned value.
pub fn watch_file(
    path: &Path,
    requests: mpsc::Sender<Request>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let parent = |p: &Path| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let mut dirs = vec![parent(path)];
    let mut names = vec![path.file_name().map(|n| n.to_os_string())];
    if let Ok(target) = std::fs::canonicalize(path) {
        if !dirs.contains(&parent(&target)) {
            dirs.push(parent(&target));
        }
        names.push(target.file_name().map(|n| n.to_os_string()));
    }
    let names: Vec<_> = names.into_iter().flatten().collect();
    let (tx, mut events) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let relevant = match ev {
            // Reading the file (our own reloads included) is no change;
            // a writer closing it is the surest sign that a change is done.
            Ok(ev) if matches!(ev.kind, EventKind::Access(a) if a != AccessKind::Close(AccessMode::Write)) => {
                false
            }
            Ok(ev) => {
                ev.paths.is_empty()
                    || ev.paths.iter().any(|p| {
                        p.file_name().is_some_and(|n| {
                            names.iter().any(|m| m == n) || n.to_string_lossy().starts_with("..")
                        })
                    })
            }
            // Lost events (queue overflow): the file may have changed.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while events.recv().await.is_some() {
            // Wait until the events stop for DEBOUNCE.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
            if requests.send(Request::FileChanged).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        config::load_str(Path::new("t.toml"), text.as_bytes()).expect("valid config")
    }

    #[test]
    fn the_hash_is_short_hex_of_the_content() {
        let h = config_hash(b"[jobs.a]\n");
        assert_eq!(h.len(), HASH_LEN);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(h, config_hash(b"[jobs.a]\n"));
        assert_ne!(h, config_hash(b"[jobs.b]\n"));
        // SHA-256 of the empty string.
        assert_eq!(config_hash(b""), "e3b0c44298fc");
    }

    #[tokio::test]
    async fn generation_and_status_follow_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.toml");
        let job =
            |name: &str| format!("[jobs.{name}]\nschedule = \"@every 1s\"\ncommand = [\"true\"]\n");
        std::fs::write(&path, job("a")).unwrap();
        let (config, hash) = load(&path).unwrap();
        let mut reloader = Reloader::new(config, hash);
        let coord = crate::coordination::Standalone::open(&dir.path().join("state"), 10).unwrap();
        let configs = reloader.subscribe();
        let status = reloader.status();
        assert_eq!(status.borrow().generation, 1);

        let r = reloader.reload(&coord, "i", "test", false).await;
        assert_eq!(r, Reloaded::Unchanged);
        assert_eq!(status.borrow().generation, 1);

        std::fs::write(&path, job("a") + &job("b")).unwrap();
        let r = reloader.reload(&coord, "i", "test", false).await;
        assert_eq!(r, Reloaded::Applied);
        let s = status.borrow().clone();
        assert_eq!((s.generation, s.last_reload_ok), (2, true));
        assert_eq!(s.config_hash, config_hash(&std::fs::read(&path).unwrap()));
        assert!(configs.borrow().jobs.contains_key("b"));

        std::fs::write(&path, "[jobs.c]\nschedule = \"nope\"\n").unwrap();
        let r = reloader.reload(&coord, "i", "test", false).await;
        assert_eq!(r, Reloaded::Rejected);
        let s2 = status.borrow().clone();
        assert_eq!((s2.generation, s2.last_reload_ok), (2, false));
        assert_eq!(s2.config_hash, s.config_hash);
        assert!(configs.borrow().jobs.contains_key("b"));
        assert!(!configs.borrow().jobs.contains_key("c"));
    }

    #[test]
    fn restart_only_settings_keep_their_old_values() {
        let old = cfg("[scheduler]\nstate_dir = \"/a\"\nhistory = 5\nshutdown_grace = \"1s\"\n");
        let new = cfg("[scheduler]\nstate_dir = \"/b\"\nhistory = 7\nshutdown_grace = \"2s\"\n[http]\nlisten = \"127.0.0.1:9\"\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n");
        let (kept, what) = keep_restart_only(&old, new);
        assert_eq!(
            what,
            [
                "a [cluster] table was added",
                "[http] listen",
                "[scheduler] state_dir",
                "[scheduler] history"
            ]
        );
        assert_eq!(kept.scheduler.state_dir, Some(PathBuf::from("/a")));
        assert_eq!(kept.scheduler.history_limit, 5);
        assert!(kept.cluster.is_none());
        assert!(kept.http.listen.is_none());
        // Read at shutdown, so it may change.
        assert_eq!(kept.scheduler.shutdown_grace, Duration::from_secs(2));
    }

    #[test]
    fn member_settings_are_restart_only() {
        let old = cfg("[member]\nlabels = { zone = \"a\" }\nmax_runs = 2\n");
        let new = cfg("[member]\nlabels = { zone = \"b\" }\n");
        let (kept, what) = keep_restart_only(&old, new);
        assert_eq!(kept.member, old.member);
        assert_eq!(what, ["[member]"]);
    }

    /// `run --label` is merged into each reloaded config as into the first:
    /// a reload that leaves `[member]` alone (or changes only a label the
    /// command line overrides) changes nothing restart-only; one that
    /// changes it keeps the merged labels in use.
    #[test]
    fn command_line_labels_are_merged_into_each_reload() {
        let file = |zone: &str, disk: &str| {
            cfg(&format!(
                "[member]\nlabels = {{ zone = \"{zone}\", disk = \"{disk}\" }}\n"
            ))
        };
        let labels = vec![("zone".to_string(), "cli".to_string())];
        let mut first = file("a", "ssd");
        first.member.merge_labels(&labels);
        let want = std::collections::BTreeMap::from([
            ("disk".to_string(), "ssd".to_string()),
            ("zone".to_string(), "cli".to_string()),
        ]);
        assert_eq!(first.member.labels, want);
        let reloader = Reloader::new(first.clone(), "h".into()).with_labels(labels);
        for same in [file("a", "ssd"), file("b", "ssd")] {
            let (same, what) = reloader.keep_restart_only(&first, same);
            assert_eq!((same.member.labels, what), (want.clone(), vec![]));
        }
        let (kept, what) = reloader.keep_restart_only(&first, file("a", "hdd"));
        assert_eq!((kept.member.labels, what), (want, vec!["[member]"]));
    }
}
