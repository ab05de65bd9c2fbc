//! Claim transactions sent together. Every claim is its own transaction
//! (its compares, its branches), and a round trip each makes 1,000 claims
//! due together take a third of a second. So claims in flight at once share
//! one: one task sends them, and whatever claims queued while a transaction
//! was out go next as one transaction whose operations are the claims'
//! transactions, nested (group commit). etcd applies it at one revision and
//! answers each nested transaction as it would alone. A lone claim goes out
//! as it is, so a single fire waits for nothing.
//!
//! etcd evaluates every compare of a transaction, nested ones included,
//! before it applies any operation, so two claims of one concurrency group
//! in one batch would both find the same place free: a batch holds at
//! most one claim per group, and the others go in the next.
//!
//! A batch whose answer is lost fails every claim in it alike; each claim
//! then finds out for itself whether it went through (`claim_once`'s
//! read-back), exactly as a lone claim does.

use super::*;
use etcd_client::TxnResponse;
use tokio::sync::oneshot;

/// Claims per transaction: etcd takes at most 128 operations in each list
/// of a transaction (`--max-txn-ops`), and every claim is one.
pub(super) const MAX_CLAIMS_PER_TXN: usize = 100;

/// A claim's answer: its own transaction's response and the revision it
/// was applied at.
pub(super) type Answer = std::result::Result<(TxnResponse, i64), CoordError>;

/// A claim's transaction, its group and the group's limit (if any), and
/// where its answer goes.
type Queued = (Txn, Option<(String, u32)>, oneshot::Sender<Answer>);

/// Operations etcd takes in one list of a transaction; a nested level
/// gets what its parent leaves, and a group claim's places nest two
/// operations deep each.
const MAX_TXN_OPS: usize = 128;

/// The queue of claim transactions, and the task that sends them.
#[derive(Default)]
pub(super) struct ClaimBatches {
    queue: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
}

impl ClaimBatches {
    /// Send `txn`, a claim of a job in `group` (if any), with whatever
    /// other claims are waiting.
    pub(super) async fn txn(
        &self,
        client: &Client,
        txn: Txn,
        group: Option<(&str, u32)>,
    ) -> Answer {
        let group = group.map(|(g, limit)| (g.to_string(), limit));
        let (tx, rx) = oneshot::channel();
        let lost = || CoordError::Etcd("claim: the claim sender stopped".into());
        {
            let mut queue = self.queue.lock().expect("claim queue lock");
            let sender = queue.get_or_insert_with(|| {
                let (sender, queued) = mpsc::unbounded_channel();
                tokio::spawn(send_batches(client.clone(), queued));
                sender
            });
            if let Err(mpsc::error::SendError((txn, group, tx))) = sender.send((txn, group, tx)) {
                // Its task ended with the runtime it ran on: a new one.
                let (sender, queued) = mpsc::unbounded_channel();
                tokio::spawn(send_batches(client.clone(), queued));
                sender.send((txn, group, tx)).map_err(|_| lost())?;
                *queue = Some(sender);
            }
        }
        rx.await.unwrap_or_else(|_| Err(lost()))
    }
}

async fn send_batches(mut client: Client, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let mut batch = Vec::new();
    let mut later: Vec<Queued> = Vec::new();
    loop {
        if later.is_empty() {
            if queued.recv_many(&mut batch, MAX_CLAIMS_PER_TXN).await == 0 {
                return;
            }
        } else {
            batch.append(&mut later);
            while batch.len() < MAX_CLAIMS_PER_TXN {
                match queued.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
        }
        let mut groups = std::collections::HashSet::new();
        let (mut now, mut next): (Vec<Queued>, Vec<Queued>) =
            batch.drain(..).partition(|(_, group, _)| {
                group.as_ref().is_none_or(|(g, _)| groups.insert(g.clone()))
            });
        // The deepest group claim leaves room for fewer claims beside it:
        // each of its levels is a nested transaction of up to three
        // operations (the place, the marker, a placed run's assignment).
        let deepest = |q: &[Queued]| {
            q.iter()
                .filter_map(|(_, g, _)| g.as_ref().map(|(_, l)| *l as usize))
                .max()
                .unwrap_or(0)
        };
        while now.len() > 1 && now.len() + 3 * deepest(&now) + 8 > MAX_TXN_OPS {
            next.insert(0, now.pop().expect("more than one"));
        }
        later = next;
        let (txns, answers): (Vec<Txn>, Vec<oneshot::Sender<Answer>>) =
            now.into_iter().map(|(txn, _, tx)| (txn, tx)).unzip();
        if txns.len() == 1 {
            let txn = txns.into_iter().next().expect("one");
            let answer = client.txn(txn).await.map_or_else(
                |e| Err(etcd_err("claim")(e)),
                |r| {
                    let rev = r.header().map_or(0, |h| h.revision());
                    Ok((r, rev))
                },
            );
            let _ = answers.into_iter().next().expect("one").send(answer);
            continue;
        }
        let n = txns.len();
        let all = Txn::new().and_then(txns.into_iter().map(TxnOp::txn).collect::<Vec<_>>());
        match client.txn(all).await {
            Ok(resp) => {
                let rev = resp.header().map_or(0, |h| h.revision());
                let nested: Vec<TxnResponse> = resp
                    .op_responses()
                    .into_iter()
                    .filter_map(|r| match r {
                        TxnOpResponse::Txn(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                if nested.len() != n {
                    for a in answers {
                        let _ = a.send(Err(CoordError::Etcd(format!(
                            "claim: a batch of {n} claims was answered with {} results",
                            nested.len()
                        ))));
                    }
                    continue;
                }
                for (a, r) in answers.into_iter().zip(nested) {
                    let _ = a.send(Ok((r, rev)));
                }
            }
            Err(e) => {
                let cause = format!("claim: {}", in_words(&e));
                for a in answers {
                    let _ = a.send(Err(CoordError::Etcd(cause.clone())));
                }
            }
        }
    }
}
