//! `[notify]` webhooks: told by the scheduler that started a run (the
//! leader, in a cluster) when it fails, recovers, succeeds, is lost, or
//! when ticks were missed.
//!
//! Nothing here may hold up a fire: the scheduler hands entries over with
//! [`Notifier::entry`], which never waits (a full queue drops the
//! notification, logged and counted). One task turns entries into
//! notifications and puts each on its receiver's own queue, so that a
//! receiver that hangs backs up only its own deliveries; each receiver's
//! worker sends a few at once, each retried on its own task. A delivery is
//! at least once: every attempt of one notification carries the same
//! `X-Bgsched-Delivery` id, for receivers that must not act twice.

use crate::config::{Config, Event, NotifySettings, Webhook};
use crate::coordination::{Backend, HistoryReader};
use crate::model::RunRecord;
use crate::observe::Metrics;
use hmac::{KeyInit, Mac};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};

/// Entries waiting to be turned into notifications; beyond this the
/// scheduler is ending runs faster than they can be looked at.
const QUEUE: usize = 1024;

/// Notifications waiting for one receiver; beyond this it is not keeping
/// up (or not answering), and its newest ones are dropped.
const PER_RECEIVER: usize = 256;

/// Deliveries in flight to one receiver at once, retries' waits included.
const IN_FLIGHT_PER_RECEIVER: usize = 8;

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
    config: Option<watch::Receiver<Arc<Config>>>,
    metrics: Arc<Metrics>,
    /// Entries queued plus deliveries not finished, for [`Notifier::drain`].
    pending: Arc<AtomicUsize>,
}

/// Whether an entry that is `event` is wanted by any of `notify`'s
/// webhooks (a success also for the `recovered` it may be).
fn wanted(notify: &NotifySettings, event: Event) -> bool {
    notify.wants(event) || (event == Event::Succeeded && notify.wants(Event::Recovered))
}

impl Notifier {
    /// A notifier that tells nobody (tests, and schedulers without a backend
    /// to read history from).
    pub fn off() -> Arc<Self> {
        Arc::new(Notifier {
            queue: None,
            config: None,
            metrics: Arc::default(),
            pending: Arc::default(),
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
        let pending = Arc::new(AtomicUsize::new(0));
        let sender = Sender {
            client: None,
            history,
            metrics: metrics.clone(),
            instance,
            pending: pending.clone(),
        };
        tokio::spawn(sender.serve(config.clone(), entries));
        Arc::new(Notifier {
            queue: Some(queue),
            config: Some(config),
            metrics,
            pending,
        })
    }

    /// A history entry was written (or a run ended): notify whoever wants
    /// to know. Entries that no webhook wants cost a match and a look at
    /// the config.
    pub fn entry(&self, rec: &RunRecord) {
        let (Some(queue), Some(config)) = (&self.queue, &self.config) else {
            return;
        };
        let Some(event) = Event::of(rec.outcome) else {
            return;
        };
        if rec.retried || !wanted(&config.borrow().notify, event) {
            return;
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::TrySendError::Full(rec)) = queue.try_send(rec.clone()) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.metrics
                .webhook_undelivered(event.name(), "(all)", "queue_full");
            tracing::warn!(job = %rec.key.job, run_id = %rec.key.run_id, event = event.name(), "webhook notification dropped: {QUEUE} are already waiting to be sent");
        }
    }

    /// On shutdown: wait up to `within` for what is queued or being sent,
    /// then say how much is left undelivered.
    pub async fn drain(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let left = loop {
            let left = self.pending.load(Ordering::SeqCst);
            if left == 0 || tokio::time::Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if left > 0 {
            tracing::warn!(
                undelivered = left,
                "stopping with {left} webhook notification(s) not delivered after {}",
                humantime::format_duration(within)
            );
        }
    }
}

/// One notification for one receiver.
struct Delivery {
    hook: Webhook,
    event: Event,
    body: Arc<Payload>,
    job: String,
    run_id: String,
}

struct Sender {
    /// Made by the serving task: reading the system's trust store takes a
    /// while, and nothing but the first delivery waits for it.
    client: Option<reqwest::Client>,
    history: Backend,
    metrics: Arc<Metrics>,
    instance: String,
    pending: Arc<AtomicUsize>,
}

impl Sender {
    async fn serve(
        mut self,
        config: watch::Receiver<Arc<Config>>,
        mut entries: mpsc::Receiver<RunRecord>,
    ) {
        let client = tokio::task::spawn_blocking(|| {
            reqwest::Client::builder()
                .user_agent(concat!("bgsched/", env!("CARGO_PKG_VERSION")))
                // A receiver that moved answers 3xx: that is for whoever
                // configured it to fix, not for a POST to follow.
                .redirect(reqwest::redirect::Policy::none())
                .build()
        })
        .await;
        match client {
            Ok(Ok(client)) => self.client = Some(client),
            Ok(Err(e)) => tracing::error!("webhooks are off: no HTTP client could be made ({e})"),
            Err(_) => {}
        }
        let me = Arc::new(self);
        let mut receivers: HashMap<String, mpsc::Sender<Delivery>> = HashMap::new();
        while let Some(rec) = entries.recv().await {
            let notify = config.borrow().notify.clone();
            let mut events = Vec::new();
            if let Some(event) = Event::of(rec.outcome) {
                if event == Event::Succeeded
                    && notify.wants(Event::Recovered)
                    && me.after_failure(&rec).await
                {
                    events.push(Event::Recovered);
                }
                events.push(event);
            }
            for event in events {
                let body = Arc::new(payload(event, &rec, &me.instance));
                for hook in notify.webhooks.iter().filter(|w| w.events.contains(&event)) {
                    let queue = receivers
                        .entry(hook.url.clone())
                        .or_insert_with(|| me.clone().receiver());
                    let delivery = Delivery {
                        hook: hook.clone(),
                        event,
                        body: body.clone(),
                        job: rec.key.job.clone(),
                        run_id: rec.key.run_id.clone(),
                    };
                    me.pending.fetch_add(1, Ordering::SeqCst);
                    if let Err(mpsc::error::TrySendError::Full(d)) = queue.try_send(delivery) {
                        me.pending.fetch_sub(1, Ordering::SeqCst);
                        let shown = shown_url(&d.hook.url);
                        me.metrics
                            .webhook_undelivered(event.name(), &shown, "queue_full");
                        tracing::warn!(job = %d.job, run_id = %d.run_id, event = event.name(), webhook = %shown, "webhook notification dropped: {PER_RECEIVER} are already waiting for this receiver");
                    }
                }
            }
            me.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The queue of one receiver and its worker, which sends up to
    /// [`IN_FLIGHT_PER_RECEIVER`] at once.
    fn receiver(self: Arc<Self>) -> mpsc::Sender<Delivery> {
        let (queue, mut deliveries) = mpsc::channel::<Delivery>(PER_RECEIVER);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT_PER_RECEIVER));
        tokio::spawn(async move {
            while let Some(d) = deliveries.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    let span = tracing::info_span!("webhook", job = %d.job, run_id = %d.run_id, event = d.event.name(), webhook = %shown_url(&d.hook.url));
                    tracing::Instrument::instrument(me.deliver(&d.hook, d.event, &d.body), span)
                        .await;
                    me.pending.fetch_sub(1, Ordering::SeqCst);
                    drop(slot);
                });
            }
        });
        queue
    }

    /// Whether the job's run that finished last before `rec` failed (or
    /// was lost). By finish time, not start: with `overlap = "allow"` an
    /// older run may end after a newer one. Failed attempts that were
    /// retried are not a run's result and do not count.
    async fn after_failure(&self, rec: &RunRecord) -> bool {
        let Some(ended) = rec.ended_at else {
            return false;
        };
        match self.history.recent(&rec.key.job, LOOK_BACK).await {
            Ok(entries) => entries
                .iter()
                .filter(|r| r.key.run_id != rec.key.run_id && !r.retried)
                .filter_map(|r| Some((r.ended_at?, Event::failing(r.outcome)?)))
                .filter(|(at, _)| *at <= ended)
                .max_by_key(|(at, _)| *at)
                .is_some_and(|(_, failing)| failing),
            Err(e) => {
                tracing::warn!(job = %rec.key.job, run_id = %rec.key.run_id, "cannot tell whether this success is a recovery (no `recovered` sent): {e}");
                false
            }
        }
    }

    /// POST `body` until a 2xx answer, a refusal, or the retries run out.
    async fn deliver(&self, hook: &Webhook, event: Event, body: &Payload) {
        let shown = shown_url(&hook.url);
        let Some(client) = &self.client else {
            self.metrics
                .webhook_undelivered(event.name(), &shown, "no_client");
            return;
        };
        let mut backoff = FIRST_BACKOFF;
        let attempts = hook.retries + 1;
        for attempt in 1..=attempts {
            let mut request = client
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
                    self.metrics
                        .webhook_attempt(event.name(), &shown, "delivered");
                    tracing::info!(
                        attempt,
                        status = answer.status().as_u16(),
                        "webhook delivered"
                    );
                    return;
                }
                Ok(answer) => {
                    self.metrics.webhook_attempt(event.name(), &shown, "failed");
                    let status = answer.status();
                    let again = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if !again {
                        self.metrics
                            .webhook_undelivered(event.name(), &shown, "refused");
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
                    self.metrics.webhook_attempt(event.name(), &shown, "failed");
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
                    .webhook_undelivered(event.name(), &shown, "retries_exhausted");
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

/// The URL as logs and metrics show it: scheme, host and port, never the
/// path or query, where webhook tokens live.
pub fn shown_url(url: &str) -> String {
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
