//! Following a run's output from any replica: a follower announces itself
//! under `P/follow/<run-id>/`, and only then does the run's supervisor put
//! its new output under `P/output/<run-id>/<offset>` (bound to the run's
//! lease, deleted with its record), so a run nobody follows costs etcd no
//! write.

use super::*;
use crate::coordination::LiveOutput;

/// How often a followed supervisor publishes what its job printed.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Published output older than this behind the newest is deleted: what a
/// supervisor keeps of a run's output (the record's tail) is as much.
const KEEP: u64 = 64 * 1024;
/// How often a follower looks for new output.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// The supervisor's side: publish `output` while anyone follows.
pub(super) fn publish(
    cfg: EtcdConfig,
    shared: Arc<tokio::sync::OnceCell<Client>>,
    keys: Keys,
    run_id: String,
    lease: i64,
    output: Arc<dyn LiveOutput>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut published = 0u64;
        loop {
            let attempt = async {
                let mut client = shared.get_or_try_init(|| connect(&cfg)).await?.clone();
                let followers = keys.followers(&run_id);
                let count = |client: &mut Client| {
                    let mut client = client.clone();
                    let followers = followers.clone();
                    async move {
                        client
                            .get(
                                followers,
                                Some(GetOptions::new().with_prefix().with_count_only()),
                            )
                            .await
                            .map(|r| (r.count(), r.header().map_or(0, |h| h.revision())))
                            .map_err(etcd_err("read followers"))
                    }
                };
                let (n, rev) = count(&mut client).await?;
                if n == 0 {
                    // Nobody follows: wait for the first one.
                    let opts = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1);
                    let mut stream = client
                        .watch(followers.clone(), Some(opts))
                        .await
                        .map_err(etcd_err("watch followers"))?;
                    while let Ok(Some(resp)) = stream.message().await {
                        if resp
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Put)
                        {
                            break;
                        }
                    }
                }
                let mut checked = Instant::now();
                loop {
                    let (start, text) = output.since(published);
                    if !text.is_empty() {
                        // Chunks a follower can no longer need go in the
                        // same write, so a long followed run keeps at most
                        // about what its supervisor keeps in etcd.
                        let trim_to = keys.output(&run_id, start.saturating_sub(KEEP));
                        let txn = Txn::new().and_then([
                            TxnOp::put(
                                keys.output(&run_id, start),
                                text.as_bytes(),
                                Some(PutOptions::new().with_lease(lease)),
                            ),
                            TxnOp::delete(
                                keys.outputs(&run_id),
                                Some(DeleteOptions::new().with_range(trim_to)),
                            ),
                        ]);
                        client.txn(txn).await.map_err(etcd_err("publish output"))?;
                        published = start + text.len() as u64;
                    }
                    if checked.elapsed() >= Duration::from_secs(2) {
                        checked = Instant::now();
                        if count(&mut client).await?.0 == 0 {
                            return Ok::<(), CoordError>(());
                        }
                    }
                    tokio::time::sleep(PUBLISH_EVERY).await;
                }
            };
            if attempt.await.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    })
}

/// A follower's presence, on its own lease: gone with it if it dies.
pub struct Following {
    lease: i64,
    client: Client,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.keeper.abort();
        let (mut client, lease) = (self.client.clone(), self.lease);
        tokio::spawn(async move {
            let _ = client.lease_revoke(lease).await;
        });
    }
}

impl Etcd {
    /// Announce a follower of `run_id`, kept while the value lives.
    pub async fn follow(&self, run_id: &str) -> Result<Following> {
        let mut client = self.client();
        let lease = client
            .lease_grant(10, None)
            .await
            .map_err(etcd_err("grant a follower lease"))?
            .id();
        client
            .put(
                format!("{}{}", self.keys().followers(run_id), new_run_id()),
                "",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd_err("announce a follower"))?;
        let mut keep = client.clone();
        let keeper = tokio::spawn(async move {
            if let Ok((mut k, mut answers)) = keep.lease_keep_alive(lease).await {
                loop {
                    if k.keep_alive().await.is_err() {
                        return;
                    }
                    let _ = answers.message().await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            }
        });
        Ok(Following {
            lease,
            client,
            keeper,
        })
    }

    /// The published output of `run_id` from offset `from` on: each chunk
    /// with the offset it starts at, in order.
    pub async fn output_since(&self, run_id: &str, from: u64) -> Result<Vec<(u64, String)>> {
        let keys = self.keys();
        let prefix = keys.outputs(run_id);
        let mut end = prefix.clone().into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let resp = self
            .client()
            .get(
                keys.output(run_id, from),
                Some(GetOptions::new().with_range(end)),
            )
            .await
            .map_err(etcd_err("read published output"))?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let offset = kv.key_str().ok()?.strip_prefix(&prefix)?.parse().ok()?;
                Some((offset, String::from_utf8_lossy(kv.value()).into_owned()))
            })
            .collect())
    }
}

/// How long a follower waits between looks, for the engine's loop.
pub const FOLLOW_POLL: Duration = POLL_EVERY;
