//! Runs asked of the standalone leader: one-off runs at a later time
//! (`scheduled/<run-id>.json`), which become requests
//! (`requests/<run-id>.json`) when due. A claim takes a request by renaming
//! it to `<run-id>.claimed`, which only one claim can do, so a run fires
//! once even across a restart; the claimed file goes once the run has a
//! record (from then on the run's supervisor answers for it, as for a
//! tick's). One left without a record a minute after its claim means the
//! run never started: it is recorded lost.

use super::*;
use crate::coordination::TriggerRequest;
use std::collections::HashSet;
use tokio::sync::mpsc;

/// A fan-in under way: its request and the marks it uses up.
#[derive(serde::Serialize, serde::Deserialize)]
struct FanInIntent {
    req: TriggerRequest,
    taken: Vec<PathBuf>,
}

/// How long a claimed request may go without its run's record before the
/// run counts as lost (the scheduler stopped between claim and start).
const CLAIMED_FOR: Duration = Duration::from_secs(60);
/// What a run at a later time that a cancel took is renamed to.
const CANCELLING: &str = "cancelling";
/// How long a cancel may take from its rename to its record before the
/// leader takes it for killed and records the run itself: the leader must
/// not write its "a caller unknown" record under a cancel still at work.
const CANCEL_RECORDS_WITHIN: Duration = Duration::from_secs(10);
/// The longest wait between looks at the two directories.
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl Standalone {
    fn scheduled_dir(&self) -> PathBuf {
        self.root.join("scheduled")
    }

    fn requests_dir(&self) -> PathBuf {
        self.root.join("requests")
    }

    /// Keep `req` (with its `at`) until it is due.
    pub fn schedule_run(&self, req: &TriggerRequest) -> Result<()> {
        let dir = self.scheduled_dir();
        self.ensure_dir(&dir)?;
        let json = serde_json::to_vec_pretty(req).expect("a request serializes");
        atomic_write(&dir.join(format!("{}.json", req.run_id)), &json, true)
    }

    /// Ask the leader for the run `req` at once (a dependent's, `after`).
    pub(crate) fn ask_for(&self, req: &TriggerRequest) -> Result<()> {
        let dir = self.requests_dir();
        self.ensure_dir(&dir)?;
        let json = serde_json::to_vec_pretty(req).expect("a request serializes");
        atomic_write(&dir.join(format!("{}.json", req.run_id)), &json, true)
    }

    /// Where `job` (`after_all`) keeps the ends of its upstream jobs that
    /// it has not run after yet: `<upstream>/<run-id>.json` each.
    fn marks_dir(&self, job: &str) -> PathBuf {
        self.job_dir(job).join("after")
    }

    /// Mark `up`'s end for `job` (`after_all`). Older marks of the same
    /// upstream go: several ends before the others' count once.
    pub(crate) fn mark_upstream(&self, job: &str, up: &crate::model::Upstream) -> Result<()> {
        let dir = self.marks_dir(job).join(&up.job);
        self.ensure_dir(&dir)?;
        let name = format!("{}.json", up.run_id);
        let json = serde_json::to_vec_pretty(up).expect("an upstream serializes");
        atomic_write(&dir.join(&name), &json, true)?;
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "json") && entry.file_name() != *name {
                let _ = fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// The leader's side of `after_all` (see `Coordinator::fan_in`). The
    /// marks it uses up and the request's run id are written down first
    /// (`taking.json`), so that a crash part way is finished, not redone,
    /// at the next look, and a mark that arrives meanwhile stays for the
    /// next run.
    pub(super) fn fan_in_sync(&self, job: &str, upstreams: &[String]) -> Result<bool> {
        let dir = self.marks_dir(job);
        let intent_path = dir.join("taking.json");
        if let Some(intent) = fs::read(&intent_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<FanInIntent>(&b).ok())
        {
            return self.finish_fan_in(&intent_path, intent).map(|_| false);
        }
        let mut taken: Vec<PathBuf> = Vec::new();
        let mut newest: Option<crate::model::Upstream> = None;
        for up in upstreams {
            let mut ready = false;
            for entry in fs::read_dir(dir.join(up)).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let Some(mark) = fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<crate::model::Upstream>(&b).ok())
                else {
                    continue;
                };
                match self.upstream_ended_so(&mark) {
                    None => {}
                    Some(true) => {
                        ready = true;
                        if newest.as_ref().is_none_or(|n| n.run_id < mark.run_id) {
                            newest = Some(mark.clone());
                        }
                        taken.push(path);
                    }
                    // Its supervisor died after marking: recorded lost.
                    Some(false) => {
                        let _ = fs::remove_file(&path);
                    }
                }
            }
            if !ready {
                return Ok(false);
            }
        }
        let why = format!("after all of {}", upstreams.join(", "));
        let req = TriggerRequest::after(job, why, newest);
        let intent = FanInIntent { req, taken };
        let json = serde_json::to_vec_pretty(&intent).expect("a fan-in serializes");
        atomic_write(&intent_path, &json, true)?;
        self.finish_fan_in(&intent_path, intent)
    }

    fn finish_fan_in(&self, intent_path: &Path, intent: FanInIntent) -> Result<bool> {
        let requests = self.requests_dir();
        let asked = requests
            .join(format!("{}.json", intent.req.run_id))
            .exists()
            || requests
                .join(format!("{}.claimed", intent.req.run_id))
                .exists()
            || self.recorded(&intent.req);
        if !asked {
            self.ask_for(&intent.req)?;
        }
        for path in &intent.taken {
            let _ = fs::remove_file(path);
        }
        let _ = fs::remove_file(intent_path);
        Ok(!asked)
    }

    /// Whether the upstream run of an `after` request ended as its request
    /// says: `None` while its record does not tell yet (it still runs, or
    /// its supervisor is writing it).
    fn upstream_ended_so(&self, up: &crate::model::Upstream) -> Option<bool> {
        let path = self
            .job_dir(&up.job)
            .join("runs")
            .join(format!("{}.json", up.run_id));
        let rec: RunRecord = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        match rec.outcome {
            Outcome::Running => None,
            outcome => Some(outcome == up.outcome),
        }
    }

    /// Take the run at a later time `run_id` away before its time and
    /// record it cancelled (`record` makes the entry of the request); `None`
    /// if it is not waiting for its time (any more). The take is a rename,
    /// as the leader's turning it into a request is, so only one of them
    /// gets it; one taken but not yet recorded (a crash in between) is
    /// recorded by the leader's next look (`settle_cancelled`).
    pub fn cancel_scheduled(
        &self,
        run_id: &str,
        record: impl FnOnce(&TriggerRequest) -> RunRecord,
    ) -> Result<Option<RunRecord>> {
        let dir = self.scheduled_dir();
        let from = dir.join(format!("{run_id}.json"));
        let taken = dir.join(format!("{run_id}.{CANCELLING}"));
        // A rename keeps the file's time, and the leader tells a cancel at
        // work from a killed one by the taken file's age.
        if let Ok(f) = fs::File::options().write(true).open(&from) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        match fs::rename(&from, &taken) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&from)(e)),
        }
        let Some(req) = read_request(&taken) else {
            return Err(CoordError::Corrupt {
                path: taken.display().to_string(),
                reason: "not a run request".to_string(),
            });
        };
        let rec = record(&req);
        self.write_cancelled(&taken, &rec)?;
        Ok(Some(rec))
    }

    /// Record `rec`, the entry of the cancelled request at `taken`, and
    /// let the request go.
    fn write_cancelled(&self, taken: &Path, rec: &RunRecord) -> Result<()> {
        let record = self
            .runs_dir(&rec.key.job)?
            .join(format!("{}.json", rec.key.run_id));
        super::records::write_record(&record, rec)?;
        let _ = fs::remove_file(taken);
        Ok(())
    }

    /// Record the runs at a later time that a cancel took away and could
    /// not record (it was killed in between).
    fn settle_cancelled(&self) {
        for req in read_requests(&self.scheduled_dir(), CANCELLING) {
            let taken = self
                .scheduled_dir()
                .join(format!("{}.{CANCELLING}", req.run_id));
            // A time ahead of the clock (the clock stepped back) counts as
            // old: a run left unrecorded is worse than a wrong reason.
            let age = fs::metadata(&taken)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or(Duration::MAX))
                .unwrap_or(Duration::MAX);
            if age < CANCEL_RECORDS_WITHIN {
                continue;
            }
            if self.recorded(&req) {
                let _ = fs::remove_file(&taken);
                continue;
            }
            let rec = req.cancelled_before_its_time(
                "a caller unknown (its cancel stopped before recording the run)",
                "",
            );
            if let Err(e) = self.write_cancelled(&taken, &rec) {
                tracing::warn!(job = %req.job, run_id = %req.run_id, "a cancelled run at a later time cannot be recorded yet: {e}");
            }
        }
    }

    /// The one-off runs whose record does not exist yet: scheduled, due
    /// and waiting, or claimed and starting.
    pub fn scheduled_runs(&self) -> Vec<TriggerRequest> {
        let mut all = read_requests(&self.scheduled_dir(), "json");
        all.extend(read_requests(&self.requests_dir(), "json"));
        all.extend(
            read_requests(&self.requests_dir(), "claimed")
                .into_iter()
                .filter(|r| !self.recorded(r)),
        );
        all.sort_by(|a, b| (a.at, &a.run_id).cmp(&(b.at, &b.run_id)));
        all
    }

    /// Take request `id` for a claim: true for exactly one caller.
    pub(super) fn take_request(&self, id: &str) -> Result<bool> {
        let dir = self.requests_dir();
        let from = dir.join(format!("{id}.json"));
        let claimed = dir.join(format!("{id}.claimed"));
        match fs::rename(&from, &claimed) {
            Ok(()) => {
                // Its age counts from the claim, not from when it was asked for.
                if let Ok(f) = fs::File::options().write(true).open(&claimed) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                sync_dir(&dir);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&from)(e)),
        }
    }

    /// Let request `id` go. A run that just started has no record yet: its
    /// supervisor writes one a moment later. Until then the claimed file is
    /// all that shows the run exists, so it stays, and `settle_claimed`
    /// clears it once the record is there (or records the run lost).
    pub(super) fn forget_request(&self, id: &str) {
        let dir = self.requests_dir();
        let claimed = dir.join(format!("{id}.claimed"));
        let unrecorded = read_request(&claimed).is_some_and(|req| !self.recorded(&req));
        if !unrecorded {
            let _ = fs::remove_file(claimed);
        }
        let _ = fs::remove_file(dir.join(format!("{id}.json")));
    }

    fn recorded(&self, req: &TriggerRequest) -> bool {
        self.job_dir(&req.job)
            .join("runs")
            .join(format!("{}.json", req.run_id))
            .exists()
    }

    /// The leader's side: due scheduled runs become requests, and each
    /// request goes to the fire loop once; claimed ones are cleared once
    /// recorded, or recorded lost if their run never started.
    pub(super) fn serve_requests(
        &self,
        tx: mpsc::Sender<TriggerRequest>,
    ) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut sent: HashSet<String> = HashSet::new();
            loop {
                let now = Utc::now();
                let mut next = now + chrono::Duration::from_std(LOOK_EVERY).unwrap_or_default();
                let requests = state.requests_dir();
                for req in read_requests(&state.scheduled_dir(), "json") {
                    match req.at {
                        Some(at) if at > now => next = next.min(at),
                        _ => {
                            let _ = state.ensure_dir(&requests);
                            let from = state.scheduled_dir().join(format!("{}.json", req.run_id));
                            if fs::rename(&from, requests.join(format!("{}.json", req.run_id)))
                                .is_ok()
                            {
                                sync_dir(&requests);
                            }
                        }
                    }
                }
                let pending = read_requests(&requests, "json");
                // Only requests still there can come again.
                sent.retain(|id| pending.iter().any(|r| &r.run_id == id));
                for req in pending {
                    if sent.contains(&req.run_id) {
                        continue;
                    }
                    // A dependent's run waits for its upstream's record,
                    // and goes if that says otherwise (its supervisor died
                    // after asking: the run is recorded lost).
                    if let Some(up) = &req.upstream {
                        match state.upstream_ended_so(up) {
                            // An upstream that never gets a record (its
                            // supervisor died before writing any) cannot
                            // hold the request for ever.
                            None if now - req.requested_at > chrono::Duration::minutes(10) => {
                                tracing::warn!(job = %req.job, upstream_job = %up.job, upstream_run_id = %up.run_id, "not running after an upstream run that has had no record for 10 minutes");
                                state.forget_request(&req.run_id);
                                continue;
                            }
                            None => continue,
                            Some(true) => {}
                            Some(false) => {
                                tracing::warn!(job = %req.job, upstream_job = %up.job, upstream_run_id = %up.run_id, "not running after an upstream run that is not recorded {}", up.outcome);
                                state.forget_request(&req.run_id);
                                continue;
                            }
                        }
                    }
                    sent.insert(req.run_id.clone());
                    if tx.send(req).await.is_err() {
                        return;
                    }
                }
                state.settle_claimed();
                state.settle_cancelled();
                let wait = (next - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait.min(LOOK_EVERY)).await;
            }
        })
    }

    fn settle_claimed(&self) {
        let Ok(entries) = fs::read_dir(self.requests_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "claimed") {
                continue;
            }
            let Some(req) = read_request(&path) else {
                let _ = fs::remove_file(&path);
                continue;
            };
            if self.recorded(&req) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let record = self
                .job_dir(&req.job)
                .join("runs")
                .join(format!("{}.json", req.run_id));
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            if age >= CLAIMED_FOR {
                let mut rec = RunRecord::not_run(
                    crate::model::RunKey::new(
                        &req.job,
                        req.at.unwrap_or(req.requested_at),
                        crate::model::Trigger::Manual,
                        &req.requested_by,
                    ),
                    Outcome::Lost,
                    "claimed, but its supervisor never started (the scheduler stopped in between)"
                        .to_string(),
                );
                rec.key.run_id = req.run_id.clone();
                rec.key.term = 0;
                rec.upstream = req.upstream.clone();
                // A job that never ran has no runs/ directory yet.
                let written = self
                    .runs_dir(&req.job)
                    .and_then(|_| super::records::write_record(&record, &rec));
                match written {
                    Ok(()) => {
                        tracing::warn!(job = %req.job, run_id = %req.run_id, "run lost: claimed, never started");
                        let _ = fs::remove_file(&path);
                    }
                    Err(e) => {
                        tracing::warn!(job = %req.job, run_id = %req.run_id, "a run claimed but never started cannot be recorded lost yet: {e}")
                    }
                }
            }
        }
    }
}

fn read_request(path: &Path) -> Option<TriggerRequest> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn read_requests(dir: &Path, ext: &str) -> Vec<TriggerRequest> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .filter_map(|p| read_request(&p))
        .collect()
}

/// Make a rename in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_run_stays_findable_until_its_record_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = Standalone::open(dir.path(), 10).unwrap();
        let req = TriggerRequest {
            run_id: crate::model::new_run_id(),
            job: "later".into(),
            requested_by: "test".into(),
            requested_at: Utc::now(),
            params: Default::default(),
            at: Some(Utc::now()),
            upstream: None,
            placement: Default::default(),
            first_attempt: None,
        };
        let requests = state.requests_dir();
        state.ensure_dir(&requests).unwrap();
        let json = serde_json::to_vec(&req).unwrap();
        fs::write(requests.join(format!("{}.json", req.run_id)), json).unwrap();
        assert!(state.take_request(&req.run_id).unwrap());
        // Its supervisor started but has not written the record yet.
        state.forget_request(&req.run_id);
        let ids = |state: &Standalone| -> Vec<String> {
            state
                .scheduled_runs()
                .into_iter()
                .map(|r| r.run_id)
                .collect()
        };
        assert_eq!(ids(&state), std::slice::from_ref(&req.run_id));
        let runs = state.runs_dir(&req.job).unwrap();
        fs::write(runs.join(format!("{}.json", req.run_id)), "{}").unwrap();
        assert_eq!(ids(&state), Vec::<String>::new());
        state.settle_claimed();
        assert!(!requests.join(format!("{}.claimed", req.run_id)).exists());
        // A request answered with a record goes at once.
        state.forget_request(&req.run_id);
        assert_eq!(fs::read_dir(&requests).unwrap().count(), 0);
    }

    /// A finished run of `job` with `outcome`, recorded, as its mark names it.
    fn ended(state: &Standalone, job: &str, outcome: Outcome) -> crate::model::Upstream {
        let rec = RunRecord::not_run(
            crate::model::RunKey::new(job, Utc::now(), crate::model::Trigger::Schedule, "t"),
            outcome,
            String::new(),
        );
        let runs = state.runs_dir(job).unwrap();
        fs::write(
            runs.join(format!("{}.json", rec.key.run_id)),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        crate::model::Upstream {
            job: job.into(),
            run_id: rec.key.run_id,
            outcome,
        }
    }

    fn requests_of(state: &Standalone) -> Vec<TriggerRequest> {
        read_requests(&state.requests_dir(), "json")
    }

    #[test]
    fn a_fan_in_asks_once_when_every_upstream_ended_and_a_crash_part_way_does_not_ask_twice() {
        let dir = tempfile::tempdir().unwrap();
        let state = Standalone::open(dir.path(), 10).unwrap();
        let ups = ["a".to_string(), "b".to_string()];
        state
            .mark_upstream("r", &ended(&state, "a", Outcome::Success))
            .unwrap();
        assert!(!state.fan_in_sync("r", &ups).unwrap(), "b has not ended");
        // A second end of a replaces the first: both count once.
        state
            .mark_upstream("r", &ended(&state, "a", Outcome::Success))
            .unwrap();
        let last_b = ended(&state, "b", Outcome::Success);
        state.mark_upstream("r", &last_b).unwrap();
        assert!(state.fan_in_sync("r", &ups).unwrap());
        let asked = requests_of(&state);
        assert_eq!(asked.len(), 1);
        assert!(
            !state.fan_in_sync("r", &ups).unwrap(),
            "the marks are used up"
        );

        // Killed after writing down the next fan-in, before its request:
        // the next look finishes it, once.
        state
            .mark_upstream("r", &ended(&state, "a", Outcome::Success))
            .unwrap();
        state
            .mark_upstream("r", &ended(&state, "b", Outcome::Success))
            .unwrap();
        let marks: Vec<PathBuf> = ["a", "b"]
            .iter()
            .flat_map(|u| fs::read_dir(state.marks_dir("r").join(u)).unwrap())
            .map(|e| e.unwrap().path())
            .collect();
        let intent = FanInIntent {
            req: TriggerRequest {
                run_id: crate::model::new_run_id(),
                ..asked[0].clone()
            },
            taken: marks,
        };
        fs::write(
            state.marks_dir("r").join("taking.json"),
            serde_json::to_vec(&intent).unwrap(),
        )
        .unwrap();
        assert!(!state.fan_in_sync("r", &ups).unwrap());
        assert_eq!(requests_of(&state).len(), 2);
        assert!(!state.marks_dir("r").join("taking.json").exists());
        assert!(
            !state.fan_in_sync("r", &ups).unwrap(),
            "nothing asked twice"
        );
        assert_eq!(requests_of(&state).len(), 2);

        // An upstream recorded otherwise than its mark says (its supervisor
        // died after marking): the mark goes, nothing is asked.
        state
            .mark_upstream("r", &ended(&state, "a", Outcome::Success))
            .unwrap();
        let mut lost = ended(&state, "b", Outcome::Lost);
        lost.outcome = Outcome::Success;
        state.mark_upstream("r", &lost).unwrap();
        assert!(!state.fan_in_sync("r", &ups).unwrap());
        assert_eq!(
            fs::read_dir(state.marks_dir("r").join("b"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(requests_of(&state).len(), 2);
    }
}
