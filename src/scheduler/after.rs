//! Jobs that run after others (`after`). A run's end asks for its
//! dependents' runs itself, with its record (see the executor's
//! `dependent_runs`), and the leader answers those requests like a
//! trigger's. What is left for the leader is the fan-in of `after_all`
//! jobs: turning the upstream ends marked for a job into its one run once
//! every upstream has one.

use super::*;

/// How often the leader looks for `after_all` jobs whose upstream jobs
/// have all ended: the longest a fan-in run waits for its last upstream.
const FAN_IN_EVERY: chrono::Duration = chrono::Duration::seconds(1);

#[derive(Default)]
pub(super) struct FanIn {
    next: Option<DateTime<Utc>>,
}

impl FanIn {
    /// When the loop must wake for the next look (none without fan-in jobs).
    pub(super) fn next_wake(&self, config: &Config) -> Option<DateTime<Utc>> {
        config
            .jobs
            .values()
            .any(|j| j.after_all)
            .then(|| self.next.unwrap_or_else(Utc::now))
    }
}

impl<C: Coordinator> Scheduler<C> {
    pub(super) async fn fan_in(&self, config: &Config, leadership: &Leadership, fan: &mut FanIn) {
        let now = Utc::now();
        if fan.next.is_some_and(|t| now < t) {
            return;
        }
        fan.next = Some(now + FAN_IN_EVERY);
        for job in config.jobs.values().filter(|j| j.after_all) {
            let upstreams: Vec<String> = job.after.iter().map(|a| a.job.clone()).collect();
            match self.coord.fan_in(leadership, &job.name, &upstreams).await {
                Ok(true) => {
                    tracing::info!(job = %job.name, "all of its upstream jobs have ended: asked for its run")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job = %job.name, "could not look whether its upstream jobs have all ended: {e}")
                }
            }
        }
    }
}
