//! A paused job's record in etcd.

use super::*;
use crate::coordination::{Pause, PauseChange};

/// etcd: `P/pause/<job>`, changed by transactions that compare its
/// revision; the leader keeps a watched copy of all of them.
impl Etcd {
    /// Every job's newest pause, read from etcd now.
    pub async fn read_pauses(&self) -> Result<std::collections::HashMap<String, Pause>> {
        let prefix = self.keys().pauses();
        let resp = self
            .client()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| CoordError::Etcd(format!("read pauses: {}", in_words(&e))))?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let job = kv.key_str().ok()?.strip_prefix(&prefix)?.to_string();
                Some((job, serde_json::from_slice(kv.value()).ok()?))
            })
            .collect())
    }

    pub async fn change_pause(
        &self,
        job: &str,
        change: impl FnOnce(Option<Pause>) -> PauseChange,
    ) -> Result<PauseChange> {
        let key = self.keys().pause(job);
        let mut client = self.client();
        let err = |e: etcd_client::Error| CoordError::Etcd(format!("pause: {}", in_words(&e)));
        let now = client.get(key.clone(), None).await.map_err(err)?;
        let (current, rev) = match now.kvs().first() {
            Some(kv) => (serde_json::from_slice(kv.value()).ok(), kv.mod_revision()),
            None => (None, 0),
        };
        let changed = change(current);
        if let PauseChange::Done(p) = &changed {
            let unchanged = if rev == 0 {
                Compare::create_revision(key.clone(), CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key.clone(), CompareOp::Equal, rev)
            };
            let txn = Txn::new().when([unchanged]).and_then([TxnOp::put(
                key,
                serde_json::to_vec(p).expect("a pause serializes"),
                None,
            )]);
            if !client.txn(txn).await.map_err(err)?.succeeded() {
                return Err(CoordError::Etcd(format!(
                    "the pause of job \"{job}\" changed meanwhile; try again"
                )));
            }
        }
        Ok(changed)
    }
}

impl Etcd {
    /// The job's newest pause as the leader's watch last saw it.
    pub(super) fn cached_pause(&self, job: &str) -> Option<Pause> {
        self.pauses.lock().expect("pauses lock").get(job).cloned()
    }

    /// Load every pause, then keep the copy current from a watch, until
    /// the task is dropped with the leadership. Returns once loaded: a new
    /// leader must not fire a paused job's tick before it knows.
    pub(super) async fn watch_pauses(&self) -> Result<tokio::task::JoinHandle<()>> {
        let prefix = self.keys().pauses();
        let mut client = self.client();
        let load = |client: Client, prefix: String, cache: Arc<Mutex<HashMap<String, Pause>>>| async move {
            let mut client = client;
            let resp = client
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(etcd_err("read pauses"))?;
            let mut all = HashMap::new();
            for kv in resp.kvs() {
                if let (Some(job), Ok(p)) = (
                    kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix)),
                    serde_json::from_slice::<Pause>(kv.value()),
                ) {
                    all.insert(job.to_string(), p);
                }
            }
            *cache.lock().expect("pauses lock") = all;
            Ok::<i64, CoordError>(resp.header().map_or(0, |h| h.revision()))
        };
        let rev = load(client.clone(), prefix.clone(), self.pauses.clone()).await?;
        let cache = self.pauses.clone();
        Ok(tokio::spawn(async move {
            let mut rev = rev;
            loop {
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1);
                if let Ok(mut stream) = client.watch(prefix.clone(), Some(opts)).await {
                    while let Ok(Some(resp)) = stream.message().await {
                        if resp.canceled() {
                            break;
                        }
                        let mut pauses = cache.lock().expect("pauses lock");
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            rev = rev.max(kv.mod_revision());
                            let Some(job) = kv.key_str().ok().and_then(|k| k.strip_prefix(&prefix))
                            else {
                                continue;
                            };
                            match event.event_type() {
                                EventType::Put => {
                                    if let Ok(p) = serde_json::from_slice::<Pause>(kv.value()) {
                                        pauses.insert(job.to_string(), p);
                                    }
                                }
                                EventType::Delete => {
                                    pauses.remove(job);
                                }
                            }
                        }
                    }
                }
                // A broken or compacted watch: load everything again.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok(r) = load(client.clone(), prefix.clone(), cache.clone()).await {
                    rev = r;
                }
            }
        }))
    }
}
