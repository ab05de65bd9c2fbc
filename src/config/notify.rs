//! `[notify]`: the webhooks told when runs end badly, recover, or do not
//! happen at all.

use super::Secret;
use crate::model::Outcome;
use std::collections::BTreeSet;
use std::time::Duration;

/// One attempt's bound when `timeout` is not given.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Retries after a failed attempt when `retries` is not given.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 3;

/// The `[notify]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifySettings {
    /// `[[notify.webhook]]`, in file order.
    pub webhooks: Vec<Webhook>,
}

/// One `[[notify.webhook]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// An `http://` or `https://` URL, POSTed one JSON object per event.
    pub url: String,
    /// What it is told about; by default everything but `succeeded`.
    pub events: BTreeSet<Event>,
    /// `secret_file`'s content: the key of the HMAC-SHA256 signature header.
    pub secret: Option<Secret>,
    /// The bound of one delivery attempt, connecting included.
    pub timeout: Duration,
    /// Attempts after the first one fails (a network error, a timeout,
    /// 408, 429 or a 5xx status).
    pub retries: u32,
}

/// What a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// A run ended badly: exit code, signal, timeout, or it could not start.
    Failed,
    /// A run succeeded and the job's previous finished run did not.
    Recovered,
    /// A run succeeded.
    Succeeded,
    /// Ticks passed without a run (an entry `missed`).
    Missed,
    /// A run's supervisor vanished (an entry `lost`).
    Lost,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::Failed,
        Event::Recovered,
        Event::Succeeded,
        Event::Missed,
        Event::Lost,
    ];

    /// What a webhook without `events` gets: every event but the one that
    /// comes with each healthy run.
    pub fn defaults() -> BTreeSet<Event> {
        Event::ALL
            .into_iter()
            .filter(|e| *e != Event::Succeeded)
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Event::Failed => "failed",
            Event::Recovered => "recovered",
            Event::Succeeded => "succeeded",
            Event::Missed => "missed",
            Event::Lost => "lost",
        }
    }

    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The event an entry with this outcome is, apart from `recovered`,
    /// which also depends on the run before it.
    pub fn of(outcome: Outcome) -> Option<Event> {
        match outcome {
            Outcome::Success => Some(Event::Succeeded),
            Outcome::Failed | Outcome::Killed | Outcome::TimedOut | Outcome::StartFailed => {
                Some(Event::Failed)
            }
            Outcome::Missed => Some(Event::Missed),
            Outcome::Lost => Some(Event::Lost),
            // Not a verdict on the job: still running, refused by overlap,
            // stopped on request, paused, or not a run at all.
            Outcome::Running
            | Outcome::Skipped
            | Outcome::Unreadable
            | Outcome::Cancelled
            | Outcome::Paused => None,
        }
    }

    /// Whether a finished run with this outcome leaves the job failing,
    /// healthy, or says nothing about it (`None`), for `recovered`.
    pub fn failing(outcome: Outcome) -> Option<bool> {
        match Event::of(outcome)? {
            Event::Failed | Event::Lost => Some(true),
            Event::Succeeded => Some(false),
            Event::Missed | Event::Recovered => None,
        }
    }
}

impl NotifySettings {
    /// Whether any webhook wants `event`.
    pub fn wants(&self, event: Event) -> bool {
        self.webhooks.iter().any(|w| w.events.contains(&event))
    }
}
