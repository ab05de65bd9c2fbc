//! `[notify]` webhooks: told by the scheduler that started a run (the
//! leader, in a cluster) when it fails, recovers, succeeds, is lost, or
//! when ticks were missed.
//!
//! Nothing here may hold up a fire: the scheduler hands entries over with
//! [`Notifier::entry`], which never waits (a full queue drops the
//! notification, logged and counted), and one task sends them, each
//! delivery retried on its own task. A delivery is at least once: every
//! attempt of one notification carries the same `X-Bgsched-Delivery` id,
//! for receivers that must not act twice.

use crate::config::{Config, Event, Webhook};
use crate::coordination::{Backend, HistoryReader};
use crate::model::RunRecord;
use crate::observe::Metrics;
use hmac::{KeyInit, Mac};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// Entries waiting to be turned into notifications; beyond this the
/// scheduler is ending runs faster than receivers take them.
const QUEUE: usize = 1024;

/// Deliveries in flight at once, retries' waits included.
const MAX_DELIVERIES: usize = 64;

/// The wait before the first retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How many of a job's newest entries are searched for the finished run
/// before a success, to tell whether it is a recovery.
const LOOK_BACK: usize = 50;

pub const SIGNATURE_HEADER: &str = "X-Bgsched-Signature-256";
pub const EVENT_HEADER: &str = "X-Bgsched-Event";
pub const DELIVERY_HEADER: &str = "X-Bgsched-Delivery";

/// The scheduler's side of the notifications: cheap to call, never waits.
pub struct Notifier {
    queue: Option<mpsc::Sender<RunRecord>>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// A notifier that tells nobody (tests, and schedulers without a backend
    /// to read history from).
    pub fn off() -> Arc<Self> {
        Arc::new(Notifier {
            queue: None,
            metrics: Arc::default(),
        })
    }

    /// Start sending the notifications of the webhooks `config` has at the
    /// time of each entry (a reload applies to the next one). `history`
    /// tells a recovery from a success.
    pub fn start(
        config: watch::Receiver<Arc<Config>>,
        history: Backend,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Arc<Self> {
        let (queue, entries) = mpsc::channel(QUEUE);
        let sending = metrics.clone();
        tokio::spawn(async move {
            // Reading the system's trust store takes a while; nothing
            // waits for it but the first delivery.
            let client = tokio::task::spawn_blocking(|| {
                reqwest::Client::builder()
                    .user_agent(concat!("bgsched/", env!("CARGO_PKG_VERSION")))
                    // A receiver that moved answers 3xx: that is for whoever
                    // configured it to fix, not for a POST to follow.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
            })
            .await;
            let client = match client {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    return tracing::error!("webhooks are off: no HTTP client could be made ({e})")
                }
                Err(_) => return,
            };
            let sender = Sender {
                client,
                history,
                metrics: sending,
                instance,
                slots: Arc::new(Semaphore::new(MAX_DELIVERIES)),
            };
            sender.serve(config, entries).await
        });
        Arc::new(Notifier {
            queue: Some(queue),
            metrics,
        })
    }

    /// A history entry was written (or a run ended): notify whoever wants
    /// to know. Entries that are no event (skips, pauses, cancels, runs
    /// still going) cost a match.
    pub fn entry(&self, rec: &RunRecord) {
        let Some(queue) = &self.queue else {
            return;
        };
        let Some(event) = Event::of(rec.outcome) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(rec)) = queue.try_send(rec.clone()) {
            self.metrics.webhook_undelivered(event.name(), "queue_full");
            tracing::warn!(job = %rec.key.job, run_id = %rec.key.run_id, event = event.name(), "webhook notification dropped: {QUEUE} are already waiting to be sent");
        }
    }
}

struct Sender {
    client: reqwest::Client,
    history: Backend,
    metrics: Arc<Metrics>,
    instance: String,
    slots: Arc<Semaphore>,
}

impl Sender {
    async fn serve(
        self,
        config: watch::Receiver<Arc<Config>>,
        mut entries: mpsc::Receiver<RunRecord>,
    ) {
        let me = Arc::new(self);
        while let Some(rec) = entries.recv().await {
            let notify = config.borrow().notify.clone();
            let Some(event) = Event::of(rec.outcome) else {
                continue;
            };
            let mut events = vec![event];
            if event == Event::Succeeded
                && notify.wants(Event::Recovered)
                && me.after_failure(&rec).await
            {
                events.insert(0, Event::Recovered);
            }
            for event in events {
                let body = Arc::new(payload(event, &rec, &me.instance));
                for hook in notify.webhooks.iter().filter(|w| w.events.contains(&event)) {
                    let Ok(slot) = me.slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (me, hook, body) = (me.clone(), hook.clone(), body.clone());
                    let (job, run_id) = (rec.key.job.clone(), rec.key.run_id.clone());
                    tokio::spawn(async move {
                        let span = tracing::info_span!("webhook", job = %job, run_id = %run_id, event = event.name(), webhook = %shown_url(&hook.url));
                        let _slot = slot;
                        tracing::Instrument::instrument(me.deliver(&hook, event, &body), span)
                            .await;
                    });
                }
            }
        }
    }

    /// Whether the job's finished run before `rec` failed (or was lost).
    async fn after_failure(&self, rec: &RunRecord) -> bool {
        match self.history.recent(&rec.key.job, LOOK_BACK).await {
            // Newest first; run ids are time-ordered (UUIDv7).
            Ok(entries) => entries
                .iter()
                .filter(|r| r.key.run_id < rec.key.run_id)
                .find_map(|r| Event::failing(r.outcome))
                .unwrap_or(false),
            Err(e) => {
                tracing::warn!(job = %rec.key.job, run_id = %rec.key.run_id, "cannot tell whether this success is a recovery (no `recovered` sent): {e}");
                false
            }
        }
    }

    /// POST `body` until a 2xx answer, a refusal, or the retries run out.
    async fn deliver(&self, hook: &Webhook, event: Event, body: &Payload) {
        let mut backoff = FIRST_BACKOFF;
        let attempts = hook.retries + 1;
        for attempt in 1..=attempts {
            let mut request = self
                .client
                .post(&hook.url)
                .timeout(hook.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(EVENT_HEADER, event.name())
                .header(DELIVERY_HEADER, &body.delivery)
                .body(body.json.clone());
            if let Some(secret) = &hook.secret {
                request = request.header(SIGNATURE_HEADER, signature(secret.expose(), &body.json));
            }
            let retry = match request.send().await {
                Ok(answer) if answer.status().is_success() => {
                    self.metrics.webhook_attempt(event.name(), "delivered");
                    tracing::info!(
                        attempt,
                        status = answer.status().as_u16(),
                        "webhook delivered"
                    );
                    return;
                }
                Ok(answer) => {
                    self.metrics.webhook_attempt(event.name(), "failed");
                    let status = answer.status();
                    let again = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if !again {
                        self.metrics.webhook_undelivered(event.name(), "refused");
                        tracing::error!(
                            attempt,
                            status = status.as_u16(),
                            "webhook refused the notification ({status}): not retried"
                        );
                        return;
                    }
                    format!("answered {status}")
                }
                // The error's own text would name the URL, which may hold
                // a token (most chat webhooks do).
                Err(e) => {
                    self.metrics.webhook_attempt(event.name(), "failed");
                    let e = e.without_url();
                    if e.is_timeout() {
                        format!(
                            "no answer within {}",
                            humantime::format_duration(hook.timeout)
                        )
                    } else {
                        error_chain(&e)
                    }
                }
            };
            if attempt == attempts {
                self.metrics
                    .webhook_undelivered(event.name(), "retries_exhausted");
                tracing::error!(
                    attempt,
                    "webhook delivery failed ({retry}); giving up after {attempts} attempts"
                );
                return;
            }
            tracing::warn!(
                attempt,
                "webhook delivery failed ({retry}); retrying in {}",
                humantime::format_duration(backoff)
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// One notification's body, the same bytes for every attempt.
struct Payload {
    delivery: String,
    json: Vec<u8>,
}

fn payload(event: Event, rec: &RunRecord, instance: &str) -> Payload {
    let delivery = crate::model::new_run_id();
    let json = serde_json::json!({
        "event": event.name(),
        "delivery": delivery,
        "sent_by": instance,
        "sent_at": chrono::Utc::now(),
        "job": rec.key.job,
        "run_id": rec.key.run_id,
        "outcome": rec.outcome,
        "record": rec,
    });
    Payload {
        delivery,
        json: serde_json::to_vec(&json).expect("a record serializes"),
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` keyed with `secret`: what a
/// receiver computes over the raw body to check the sender knew the secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The URL as logs show it: scheme, host and port, never the path or query,
/// where webhook tokens live.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            _ => "(a webhook)".to_string(),
        },
        Err(_) => "(a webhook)".to_string(),
    }
}

/// An error and its causes, one line ("connection refused", not "error
/// sending request").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn logs_show_where_a_webhook_is_but_not_its_path() {
        assert_eq!(
            shown_url("https://hooks.example.com/services/T0/B0/secret-token?x=1"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:8080/hook"),
            "http://127.0.0.1:8080/…"
        );
    }
}
