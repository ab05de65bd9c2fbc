//! `@continuous` services: jobs with no ticks that the leader keeps
//! running, one instance at a time across the cluster. A start is a claim
//! like a tick's (trigger `service`, its tick the instant of the start), so
//! the claim's overlap check is what makes it a singleton: while a run of
//! the job is active anywhere (its marker's lease alive, its `run.lock`
//! held), a start is refused and asked again every [`POLL`]. After a
//! failover the new leader thus starts it only once the old instance has
//! ended or been fenced by its own supervisor.

use super::*;
use crate::coordination::{Activity, CANCELLED};
use std::collections::HashMap;
use std::time::Duration;

/// How often a service that is not running under this scheduler is looked
/// at: running elsewhere (another leader's, a scheduler that died), or a
/// start that did not go through.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// A run that lasted this long resets the restart backoff.
pub(super) const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Service {
    /// When to try to start it next, while it is not running here.
    next_try: DateTime<Utc>,
    /// The wait before the next restart after a short run.
    backoff: Duration,
    /// The run this scheduler started, and when.
    ours: Option<(String, DateTime<Utc>)>,
    /// An instance running elsewhere that was asked to stop.
    asked: Option<String>,
}

/// The services of the config, as this leader sees them.
#[derive(Debug, Default)]
pub(super) struct Services {
    by_job: HashMap<String, Service>,
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(1))
}

impl Services {
    /// Follow the enabled services of `config`: new ones are due now,
    /// removed ones are forgotten (a running one runs on until it ends, as
    /// a removed job's run does).
    pub(super) fn follow(&mut self, config: &Config, now: DateTime<Utc>) {
        let wanted: Vec<&Job> = config
            .jobs
            .values()
            .filter(|j| j.enabled && j.schedule.is_continuous())
            .collect();
        self.by_job
            .retain(|name, _| wanted.iter().any(|j| &j.name == name));
        for job in wanted {
            self.by_job
                .entry(job.name.clone())
                .or_insert_with(|| Service {
                    next_try: now,
                    backoff: job.retry_backoff,
                    ours: None,
                    asked: None,
                });
        }
    }

    pub(super) fn is_service(&self, job: &str) -> bool {
        self.by_job.contains_key(job)
    }

    /// When the next start is due, if one is to be tried.
    pub(super) fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.by_job
            .values()
            .filter(|s| s.ours.is_none())
            .map(|s| s.next_try)
            .min()
    }

    /// The services whose start is due by `now`, by name.
    pub(super) fn due(&self, now: DateTime<Utc>) -> Vec<String> {
        let mut due: Vec<String> = self
            .by_job
            .iter()
            .filter(|(_, s)| s.ours.is_none() && s.next_try <= now)
            .map(|(name, _)| name.clone())
            .collect();
        due.sort();
        due
    }

    /// Not started now (running elsewhere, or the start failed): ask again
    /// in a moment.
    pub(super) fn later(&mut self, job: &str, now: DateTime<Utc>) {
        if let Some(s) = self.by_job.get_mut(job) {
            s.next_try = now + chrono(POLL);
        }
    }

    pub(super) fn started(&mut self, job: &str, run_id: &str, now: DateTime<Utc>) {
        if let Some(s) = self.by_job.get_mut(job) {
            s.ours = Some((run_id.to_string(), now));
            s.asked = None;
        }
    }

    /// Whether to ask `run_id` to stop: once per instance.
    fn ask_once(&mut self, job: &str, run_id: &str) -> bool {
        let Some(s) = self.by_job.get_mut(job) else {
            return false;
        };
        if s.asked.as_deref() == Some(run_id) {
            return false;
        }
        s.asked = Some(run_id.to_string());
        true
    }

    /// The supervisor of `run_id` exited: restart after the backoff, which
    /// doubles (up to `retry_backoff_max`) while runs stay short.
    pub(super) fn ended(&mut self, job: &Job, run_id: &str, now: DateTime<Utc>) {
        let Some(s) = self.by_job.get_mut(&job.name) else {
            return;
        };
        let Some((ours, since)) = s.ours.take() else {
            return;
        };
        if ours != run_id {
            s.ours = Some((ours, since));
            return;
        }
        if now - since >= chrono(STABLE_AFTER) {
            s.backoff = job.retry_backoff;
        }
        s.next_try = now + chrono(s.backoff);
        tracing::info!(job = %job.name, run_id, restart_in_ms = s.backoff.as_millis() as u64, "service ended; restarting it after the backoff");
        s.backoff = (s.backoff * 2).min(job.retry_backoff_max);
    }
}

impl<C: Coordinator> Scheduler<C> {
    /// Start each service that is due and not running anywhere.
    pub(super) async fn keep_services(
        &self,
        config: &Config,
        leadership: &Leadership,
        services: &mut Services,
        running: &mut Supervisors,
        state: &mut FireState,
    ) {
        let now = Utc::now();
        for name in services.due(now) {
            if state.stopping() {
                return;
            }
            let Some(job) = config.jobs.get(&name) else {
                services.later(&name, now);
                continue;
            };
            if self.coord.pause_of(&name).is_some_and(|p| p.is_active(now)) {
                services.later(&name, now);
                continue;
            }
            match self.coord.job_activity(&name).await {
                Ok(Activity::Idle) => {}
                Ok(Activity::Active(Some(run))) if running.tracks(&run.key.run_id) => {
                    // Started here (in an earlier term, or as a manual
                    // run): this instance is ours.
                    services.started(&name, &run.key.run_id, run.started_at);
                    continue;
                }
                Ok(Activity::Active(Some(run))) => {
                    // Left by a scheduler that died or no longer leads, or
                    // a manual run started beside any scheduler: the service
                    // moves to the leader once that one has ended.
                    if services.ask_once(&name, &run.key.run_id) {
                        let why = format!(
                            "{CANCELLED} by {}: the service moves to the leader",
                            self.instance
                        );
                        match self.coord.cancel_run(&run, &why).await {
                            Ok(_) => {
                                tracing::info!(job = %name, run_id = %run.key.run_id, on = %run.key.instance, "service runs under another scheduler; asked it to stop, to start it here")
                            }
                            Err(e) => {
                                tracing::warn!(job = %name, run_id = %run.key.run_id, "could not ask the service's instance elsewhere to stop: {e}")
                            }
                        }
                    }
                    services.later(&name, now);
                    continue;
                }
                // Its record is not readable yet: look again shortly.
                Ok(Activity::Active(None)) => {
                    services.later(&name, now);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(job = %name, "cannot tell whether the service runs: {e}");
                    services.later(&name, now);
                    continue;
                }
            }
            let fire = Fire {
                job,
                tick: crate::coordination::manual_tick(Utc::now()),
                trigger: Trigger::Service,
                request: None,
            };
            let claimed = self.claim(leadership, fire).await;
            if let Err(e) = &claimed {
                if e.is_skip() {
                    // Started elsewhere between the look and the claim.
                    services.later(&name, Utc::now());
                    continue;
                }
            }
            match self.start(leadership, fire, claimed, state).await {
                Fired::Started(child, spec) => {
                    tracing::info!(job = %name, run_id = %spec.key.run_id, "service started");
                    services.started(&name, &spec.key.run_id, Utc::now());
                    running.track(*child, &spec);
                }
                Fired::NotStarted | Fired::Placed | Fired::Superseded | Fired::Retry => {
                    services.later(&name, Utc::now())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_wait_a_doubling_backoff_until_a_run_lasts() {
        let config = crate::config::load_str(
            std::path::Path::new("jobs.toml"),
            b"[jobs.w]\nschedule = \"@continuous\"\nretry_backoff = \"2s\"\n\
              retry_backoff_max = \"5s\"\ncommand = [\"w\"]\n",
        )
        .unwrap();
        let job = &config.jobs["w"];
        let t0: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
        let secs = chrono::Duration::seconds;
        let mut s = Services::default();
        s.follow(&config, t0);
        assert_eq!(s.due(t0), ["w"]);
        let mut now = t0;
        // Short runs: 2 s, 4 s, then the 5 s cap.
        for (i, wait) in [2, 4, 5, 5].into_iter().enumerate() {
            let id = format!("run-{i}");
            s.started("w", &id, now);
            assert_eq!(s.next_wake(), None, "nothing to try while it runs here");
            now += secs(1);
            s.ended(job, &id, now);
            assert_eq!(s.next_wake(), Some(now + secs(wait)));
            assert!(s.due(now).is_empty());
            now += secs(wait);
        }
        // A run of a minute resets it.
        s.started("w", "long", now);
        now += secs(60);
        s.ended(job, "long", now);
        assert_eq!(s.next_wake(), Some(now + secs(2)));
        // Another run's end (not ours) changes nothing.
        s.started("w", "mine", now);
        s.ended(job, "other", now);
        assert_eq!(s.next_wake(), None);
        // Gone from the config: forgotten.
        s.follow(
            &crate::config::load_str(std::path::Path::new("jobs.toml"), b"").unwrap(),
            now,
        );
        assert!(!s.is_service("w"));
    }
}
