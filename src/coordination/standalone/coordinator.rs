//! The `Coordinator` interface over the local state directory.

use super::*;
use crate::coordination::{Activity, Cancel};

impl Coordinator for Standalone {
    async fn acquire_leadership(&self, instance: &str) -> Result<Leadership> {
        // A standby waits here, on a thread the process does not wait for
        // at exit, so that a stop request ends it at once.
        let lock_path = self.root.join("leader.lock");
        let file = self.open_lock(&lock_path)?;
        let file = lock_detached(file).await.map_err(io_err(&lock_path))?;
        let this = self.clone();
        let instance = instance.to_string();
        let leadership = tokio::task::spawn_blocking(move || this.lead_with(file, &instance))
            .await
            .expect("leader task panicked")?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        Ok(leadership.with_requests(rx, self.serve_requests(tx)))
    }

    async fn resign(&self, leadership: Leadership) {
        drop(leadership);
    }

    async fn last_fired(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        self.last_fired_sync(job)
    }

    async fn claim(
        &self,
        leadership: &Leadership,
        req: ClaimRequest<'_>,
    ) -> Result<Claim, ClaimRejected> {
        // On a blocking thread: the claim fsyncs, and the claims of jobs due
        // together then overlap instead of queueing behind each other.
        let this = self.clone();
        let term = leadership.term;
        let (job, instance) = (req.job.to_string(), req.instance.to_string());
        let request = req.request.map(str::to_string);
        let (tick, trigger, overlap, advances_schedule) =
            (req.tick, req.trigger, req.overlap, req.advances_schedule);
        let group = req.group.cloned();
        let upstream = req.upstream.cloned();
        // Counted from here: the hop to a blocking thread is what spreads
        // the claims of one tick over milliseconds.
        let mut arrival = if advances_schedule {
            self.arrival()
        } else {
            super::journal::Arrival::none()
        };
        tokio::task::spawn_blocking(move || {
            let req = ClaimRequest {
                job: &job,
                tick,
                trigger,
                instance: &instance,
                overlap,
                advances_schedule,
                request: request.as_deref(),
                group: group.as_ref(),
                upstream: upstream.as_ref(),
                run_on: &crate::config::RunOn::Leader,
                placement: None,
                params: None,
                first_attempt: None,
            };
            this.claim_sync(term, &req, &mut arrival)
        })
        .await
        .expect("claim task panicked")
    }

    async fn prepare(&self, _fires: usize) {
        self.claims_ahead();
    }

    async fn begin_schedules(&self, _: &Leadership, jobs: &[&str], at: DateTime<Utc>) {
        // Not made durable: losing it only means the job starts from the
        // next start, as it would without it; thousands of fsyncs would
        // slow every first start down.
        let this = self.clone();
        let jobs: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
        let written = tokio::task::spawn_blocking(move || -> Result<()> {
            for job in jobs {
                let dir = this.job_dir(&job);
                this.ensure_dir(&dir)?;
                let path = dir.join("last_tick");
                let lock = this.last_lock(&job);
                let _last = lock.lock().expect("last tick lock");
                if !path.exists() {
                    atomic_write(&path, at.to_rfc3339().as_bytes(), false)?;
                }
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::debug!("could not write the jobs' first ticks: {e}");
        }
    }

    fn pause_of(&self, job: &str) -> Option<crate::coordination::Pause> {
        Standalone::pause_of(self, job)
    }

    async fn record(&self, record: &RunRecord) -> Result<bool> {
        let dir = self.runs_dir(&record.key.job)?;
        write_record(&dir.join(format!("{}.json", record.key.run_id)), record)?;
        if record.outcome == Outcome::Missed && record.key.term > 0 {
            // As in etcd, the entry consumes its ticks; written after it, so
            // a crash in between records them twice rather than not at all.
            let lock = self.last_lock(&record.key.job);
            let _last = lock.lock().expect("last tick lock");
            if self
                .last_fired_sync(&record.key.job)?
                .is_none_or(|last| last < record.key.tick)
            {
                let path = self.job_dir(&record.key.job).join("last_tick");
                atomic_write(&path, record.key.tick.to_rfc3339().as_bytes(), true)?;
            }
        }
        self.prune(&record.key.job)?;
        Ok(true)
    }

    async fn fan_in(&self, _: &Leadership, job: &str, upstreams: &[String]) -> Result<bool> {
        let (this, job, upstreams) = (self.clone(), job.to_string(), upstreams.to_vec());
        tokio::task::spawn_blocking(move || this.fan_in_sync(&job, &upstreams))
            .await
            .unwrap_or_else(|e| Err(CoordError::Etcd(format!("fan-in task: {e}"))))
    }

    async fn reap_lost(&self, job: &str) -> Vec<RunRecord> {
        Standalone::reap_lost(self, job).unwrap_or_else(|e| {
            tracing::error!(job, "could not record lost runs: {e}");
            Vec::new()
        })
    }

    async fn reap_unrecorded(&self, key: &crate::model::RunKey) -> Option<RunRecord> {
        let path = self
            .job_dir(&key.job)
            .join("runs")
            .join(format!("{}.json", key.run_id));
        if !matches!(self.load(&key.job, &path), Loaded::Missing) {
            return None;
        }
        let rec = RunRecord::not_run(
            key.clone(),
            Outcome::Lost,
            "its supervisor process vanished before it recorded the run".into(),
        );
        match self.record(&rec).await {
            Ok(_) => Some(rec),
            Err(e) => {
                tracing::error!(job = %key.job, run_id = %key.run_id, "could not record the lost run: {e}");
                None
            }
        }
    }

    async fn finish_request(&self, run_id: &str) {
        self.forget_request(run_id);
    }

    async fn job_activity(&self, job: &str) -> Result<Activity> {
        // Held by every run of a job that does not overlap itself, also one
        // whose scheduler is gone; taken and let go again at once.
        if self.try_run_lock(job)?.is_some() {
            return Ok(Activity::Idle);
        }
        Ok(Activity::Active(
            self.active_runs(job)?.into_iter().next().map(Box::new),
        ))
    }

    async fn cancel_run(&self, run: &RunRecord, why: &str) -> Result<Cancel> {
        Ok(if self.cancel(run, why) {
            Cancel::Asked
        } else {
            Cancel::NotRunning
        })
    }

    fn backend_spec(&self) -> BackendSpec {
        BackendSpec::Standalone {
            state_dir: self.root.clone(),
            history_limit: self.history_limit,
        }
    }

    async fn shutdown(&self) {}
}

impl HistoryReader for Standalone {
    async fn recent(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        self.history(job, limit)
    }

    async fn active(&self, job: &str) -> Result<Vec<RunRecord>> {
        self.active_runs(job)
    }

    async fn find_run(&self, jobs: &[&str], run_id: &str) -> Result<Option<RunRecord>> {
        for job in jobs {
            let path = self
                .job_dir(job)
                .join("runs")
                .join(format!("{run_id}.json"));
            if let Some(rec) = self.read_record(job, &path)? {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }
}
