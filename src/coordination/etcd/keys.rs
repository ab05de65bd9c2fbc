//! The key layout under the prefix, and the values stored at the keys
//! that are not run records.

use super::*;

/// Key layout under the prefix.
#[derive(Debug, Clone)]
pub struct Keys(String);

/// The value of `P/last/<job>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LastTick {
    pub(super) tick: DateTime<Utc>,
    pub(super) term: u64,
    pub(super) run_id: String,
}

/// The value of `P/members/<instance>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub since: DateTime<Utc>,
    /// The content hash of the config the instance uses (announced again
    /// on every reload), so replicas running different configs show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The instance's wall clock when it wrote this value: rewritten at
    /// every heartbeat, so the members can compare clocks (`clock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<DateTime<Utc>>,
    /// What it offers placement (`[member]`, `run --label`).
    #[serde(default)]
    pub offer: super::placement::Offer,
    /// Chosen by the process at its start: a run placed on the member is
    /// for this process only (one restarted, or another under the same
    /// instance id, never starts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys(prefix.trim_end_matches('/').to_string())
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.0)
    }
    pub fn members(&self) -> String {
        format!("{}/members/", self.0)
    }
    pub fn member(&self, instance: &str) -> String {
        format!("{}/members/{instance}", self.0)
    }
    pub fn lasts(&self) -> String {
        format!("{}/last/", self.0)
    }
    pub fn last(&self, job: &str) -> String {
        format!("{}/last/{job}", self.0)
    }
    /// Running markers of every job.
    pub fn all_actives(&self) -> String {
        format!("{}/active/", self.0)
    }
    pub fn actives(&self, job: &str) -> String {
        format!("{}/active/{job}/", self.0)
    }
    pub fn active(&self, job: &str, run_id: &str) -> String {
        format!("{}/active/{job}/{run_id}", self.0)
    }
    pub fn histories(&self, job: &str) -> String {
        format!("{}/history/{job}/", self.0)
    }
    pub fn history(&self, job: &str, run_id: &str) -> String {
        format!("{}/history/{job}/{run_id}", self.0)
    }
    pub fn pauses(&self) -> String {
        format!("{}/pause/", self.0)
    }
    /// A job's newest pause (`bgsched pause`).
    pub fn pause(&self, job: &str) -> String {
        format!("{}/pause/{job}", self.0)
    }
    pub fn followers(&self, run_id: &str) -> String {
        format!("{}/follow/{run_id}/", self.0)
    }
    pub fn outputs(&self, run_id: &str) -> String {
        format!("{}/output/{run_id}/", self.0)
    }
    /// Zero-padded, so that the keys sort as the offsets do.
    pub fn output(&self, run_id: &str, offset: u64) -> String {
        format!("{}/output/{run_id}/{offset:020}", self.0)
    }
    pub fn scheduleds(&self) -> String {
        format!("{}/scheduled/", self.0)
    }
    /// A one-off run at a later time, until it is due.
    pub fn scheduled(&self, run_id: &str) -> String {
        format!("{}/scheduled/{run_id}", self.0)
    }
    pub fn requests(&self) -> String {
        format!("{}/requests/", self.0)
    }
    pub fn request(&self, run_id: &str) -> String {
        format!("{}/requests/{run_id}", self.0)
    }
    /// The waiting runs of every job.
    pub fn all_queued(&self) -> String {
        format!("{}/queued/", self.0)
    }
    /// The single run of `job` waiting for the active one to end.
    pub fn queued(&self, job: &str) -> String {
        format!("{}/queued/{job}", self.0)
    }
    pub fn stop_requests(&self, job: &str) -> String {
        format!("{}/stop/{job}/", self.0)
    }
    /// Put by a run that replaces `run_id`: asks that run to stop.
    pub fn stop_request(&self, job: &str, run_id: &str) -> String {
        format!("{}/stop/{job}/{run_id}", self.0)
    }
    /// The newest end of each of `job`'s upstream jobs that it waits for
    /// (`after_all`), one key per upstream job: a newer end replaces it,
    /// and the fan-in's compare of its revision sees that.
    pub fn marks(&self, job: &str) -> String {
        format!("{}/after/{job}/", self.0)
    }
    pub fn mark(&self, job: &str, upstream: &str) -> String {
        format!("{}/after/{job}/{upstream}", self.0)
    }
    /// The places of concurrency group `group`: a run of one of its jobs
    /// holds one for its life, bound to its lease.
    pub fn seats(&self, group: &str) -> String {
        format!("{}/groups/{group}/", self.0)
    }
    pub fn seat(&self, group: &str, index: u32) -> String {
        format!("{}/groups/{group}/{index}", self.0)
    }
    /// The runs placed on `member` that it has not taken over yet.
    pub fn assigns(&self, member: &str) -> String {
        format!("{}/assign/{member}/", self.0)
    }
    pub fn assign(&self, member: &str, run_id: &str) -> String {
        format!("{}/assign/{member}/{run_id}", self.0)
    }
}
