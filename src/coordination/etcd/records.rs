//! Run records and reads of the cluster's state: writing entries, pruning
//! history, and what `list`, `history` and `status` read.

use super::*;

/// etcd refuses transactions of more than 128 operations by default
/// (`--max-txn-ops`); two per job stays well below.
const JOBS_PER_TXN: usize = 50;

/// Last ticks per read: about 110 bytes each, far under the client's
/// 4 MiB message limit.
const LAST_TICKS_PER_PAGE: i64 = 1_000;

/// The end of the range of keys that start with `prefix`, as etcd's
/// `with_prefix` computes it.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// Every job's last fired tick (`P/last/<job>`).
    pub async fn last_ticks(&self) -> Result<HashMap<String, DateTime<Utc>>> {
        Ok(self
            .read_last_ticks()
            .await?
            .into_iter()
            .map(|(job, tick, _)| (job, tick))
            .collect())
    }

    /// Every job's last fired tick with the revision of its key, which the
    /// claim transaction compares.
    pub(super) async fn read_last_ticks(&self) -> Result<Vec<(String, DateTime<Utc>, i64)>> {
        let prefix = self.keys.lasts();
        // In pages, at one revision: one answer for 100,000 jobs would
        // pass the client's 4 MiB message limit.
        let range_end = prefix_end(prefix.as_bytes());
        let mut from = prefix.clone().into_bytes();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(LAST_TICKS_PER_PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = self
                .client
                .clone()
                .get(from.clone(), Some(opts))
                .await
                .map_err(etcd_err("read last ticks"))?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                let job = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                out.push((job, last_tick_of(kv), kv.mod_revision()));
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Leader info with the term read from the key's create revision.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let resp = self
            .client
            .clone()
            .get(self.keys.leader(), None)
            .await
            .map_err(etcd_err("read leader"))?;
        Ok(resp.kvs().first().and_then(|kv| {
            let mut info: LeaderInfo = parse(kv).ok()?;
            info.term = kv.create_revision() as u64;
            Some(info)
        }))
    }

    pub async fn members(&self) -> Result<Vec<MemberInfo>> {
        let resp = self
            .client
            .clone()
            .get(self.keys.members(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("read members"))?;
        Ok(resp.kvs().iter().filter_map(|kv| parse(kv).ok()).collect())
    }

    /// Active runs of `job` anywhere in the cluster, oldest first.
    pub async fn active_runs(&self, job: &str) -> Result<Vec<RunRecord>> {
        let resp = self
            .client
            .clone()
            .get(
                self.keys.actives(job),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(etcd_err("read active runs"))?;
        Ok(resp.kvs().iter().filter_map(|kv| parse(kv).ok()).collect())
    }

    /// History of `job`, newest first (run ids sort by time).
    pub async fn history(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let resp = self
            .client
            .clone()
            .get(self.keys.histories(job), Some(opts))
            .await
            .map_err(etcd_err("read history"))?;
        Ok(resp.kvs().iter().filter_map(|kv| parse(kv).ok()).collect())
    }

    /// Run the gets in one transaction, so that they see one revision: a
    /// run that ends in between is then either active or recorded, never
    /// both and never neither (its final record and the removal of its
    /// marker are one transaction too).
    pub(super) async fn get_together(
        &self,
        what: &str,
        gets: Vec<TxnOp>,
    ) -> Result<Vec<Vec<KeyValue>>> {
        let resp = self
            .client
            .clone()
            .txn(Txn::new().and_then(gets))
            .await
            .map_err(etcd_err(what))?;
        Ok(kvs_of(resp))
    }

    /// Pruning is housekeeping: its failure must not look like a lost record.
    pub(super) async fn prune_or_warn(client: &mut Client, keys: &Keys, job: &str, limit: usize) {
        // Counting on every record would add a read per fire; pruning in
        // batches only needs to look now and then: about one record in eight.
        if !rand_bits().is_multiple_of(8) {
            return;
        }
        if let Err(e) = Self::prune(client, keys, job, limit).await {
            tracing::warn!(
                job,
                "could not prune history (will retry with the next record): {e}"
            );
        }
    }

    /// Drop history entries of `job` beyond the retention limit.
    pub(super) async fn prune(
        client: &mut Client,
        keys: &Keys,
        job: &str,
        limit: usize,
    ) -> Result<()> {
        let prefix = keys.histories(job);
        let count = client
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(etcd_err("count history"))?
            .count() as usize;
        // Prune in batches, not on every record.
        if count <= limit + limit / 10 {
            return Ok(());
        }
        let opts = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_limit((count - limit + 1) as i64);
        let resp = client
            .get(prefix, Some(opts))
            .await
            .map_err(etcd_err("list history"))?;
        if let (Some(first), Some(cut)) = (resp.kvs().first(), resp.kvs().get(count - limit)) {
            client
                .delete(
                    first.key().to_vec(),
                    Some(DeleteOptions::new().with_range(cut.key().to_vec())),
                )
                .await
                .map_err(etcd_err("prune history"))?;
        }
        Ok(())
    }

    /// Write `record` once: `None` when its job's last tick moved under a
    /// `missed` entry, which is then worth writing again. `claimed`: see
    /// `Coordinator::record_claimed`.
    pub(super) async fn write_entry(
        &self,
        record: &RunRecord,
        claimed: bool,
    ) -> Result<Option<bool>> {
        let mut client = self.client.clone();
        let history = self.keys.history(&record.key.job, &record.key.run_id);
        // Never overwrite a record (a deposed leader's late skip must not
        // replace the real run's), and a record written for a leadership
        // term only while that term lasts, but for a claimed tick (a skip,
        // a run not started): the claim committed under that term, so the
        // entry is the tick's only trace even when the term ended right
        // after (a resign, a skewed clock giving up, a pause).
        let claimed = claimed || record.outcome == Outcome::Skipped;
        // The one exception: the fuller entry of a skip replaces the one its
        // claim transaction wrote under the same run id (and only that).
        let replaces = (record.outcome == Outcome::Skipped)
            .then(|| self.claimed_skip_of(&record.key.job, record.key.tick, false))
            .flatten()
            .filter(|s| s.run_id == record.key.run_id);
        let mut when = vec![match &replaces {
            Some(own) => Compare::mod_revision(history.clone(), CompareOp::Equal, own.rev),
            None => Compare::create_revision(history.clone(), CompareOp::Equal, 0),
        }];
        if record.key.term > 0 && !claimed {
            when.push(Compare::create_revision(
                self.keys.leader(),
                CompareOp::Equal,
                record.key.term as i64,
            ));
        }
        // A final record ends the run's marker, if it has one (a claimed run
        // whose supervisor could not be started).
        let mut ops = vec![
            TxnOp::put(history, json(record), None),
            TxnOp::delete(self.keys.active(&record.key.job, &record.key.run_id), None),
        ];
        // A `missed` entry consumes its ticks as a claim does: it moves the
        // job's last tick up to its newest one in the same transaction, so
        // a later leader resumes after them instead of recording them
        // missed a second time. Only the term's own leader writes it.
        let last_key = self.keys.last(&record.key.job);
        let mut advance = None;
        if record.outcome == Outcome::Missed && record.key.term > 0 && !claimed {
            let cached = self
                .last
                .lock()
                .expect("cache lock")
                .get(&record.key.job)
                .copied();
            let cached = match cached {
                Some(c) => Some(c),
                None => client
                    .get(last_key.clone(), None)
                    .await
                    .map_err(etcd_err("read last tick"))?
                    .kvs()
                    .first()
                    .map(|kv| (last_tick_of(kv), kv.mod_revision())),
            };
            if cached.is_none_or(|(tick, _)| tick < record.key.tick) {
                let last = LastTick {
                    tick: record.key.tick,
                    term: record.key.term,
                    run_id: record.key.run_id.clone(),
                };
                let (unchanged, put) = move_last(&last_key, cached, &last);
                when.push(unchanged);
                ops.push(put);
                advance = Some((record.key.tick, cached.map_or(0, |c| c.1)));
            }
        }
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(last_key, None)]);
        let resp = client.txn(txn).await.map_err(etcd_err("write record"))?;
        if !resp.succeeded() {
            if let Some((_, compared)) = advance {
                // If the last tick moved since it was read (a claim or
                // another entry of this term got there first, or the cache
                // was stale), write the entry again against what is there
                // now; judged by this attempt's own compare, not the cache,
                // which the winner may have updated already.
                let seen = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                    _ => None,
                });
                let seen = seen.map(|kv| (last_tick_of(&kv), kv.mod_revision()));
                let mut cache = self.last.lock().expect("cache lock");
                match seen {
                    Some(s) => cache.insert(record.key.job.clone(), s),
                    None => cache.remove(&record.key.job),
                };
                if seen.map_or(0, |s| s.1) != compared {
                    return Ok(None);
                }
            }
            tracing::debug!(job = %record.key.job, run_id = %record.key.run_id, "record not written: already recorded, or no longer leader");
            return Ok(Some(false));
        }
        if replaces.is_some() {
            self.claimed_skip_of(&record.key.job, record.key.tick, true);
        }
        if let Some((tick, _)) = advance {
            let rev = resp.header().map_or(0, |h| h.revision());
            self.last
                .lock()
                .expect("cache lock")
                .insert(record.key.job.clone(), (tick, rev));
        }
        Self::prune_or_warn(
            &mut client,
            &self.keys,
            &record.key.job,
            self.cfg.history_limit,
        )
        .await;
        Ok(Some(true))
    }
}

impl Etcd {
    /// For each of `jobs`: its retained history, newest first and at most
    /// `limit` entries (active runs included), and its active runs. Many
    /// jobs per transaction, for `list` and `/status` over many jobs.
    pub async fn recent_and_active(
        &self,
        jobs: Vec<String>,
        limit: usize,
    ) -> Result<Vec<(Vec<RunRecord>, Vec<RunRecord>)>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(JOBS_PER_TXN) {
            let newest = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(limit as i64);
            let gets = chunk
                .iter()
                .flat_map(|job| {
                    [
                        TxnOp::get(
                            self.keys.actives(job),
                            Some(GetOptions::new().with_prefix()),
                        ),
                        TxnOp::get(self.keys.histories(job), Some(newest.clone())),
                    ]
                })
                .collect();
            let found = self.get_together("read history", gets).await?;
            for pair in found.chunks(2) {
                let parse_all = |kvs: &[KeyValue]| -> Vec<RunRecord> {
                    kvs.iter().filter_map(|kv| parse(kv).ok()).collect()
                };
                let active = parse_all(&pair[0]);
                let mut history = active.clone();
                history.extend(parse_all(pair.get(1).map_or(&[][..], |v| &v[..])));
                history.sort_by(|a, b| b.key.run_id.cmp(&a.key.run_id));
                history.truncate(limit);
                out.push((history, active));
            }
        }
        Ok(out)
    }
}

impl HistoryReader for Etcd {
    async fn recent(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let newest = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let found = self
            .get_together(
                "read history",
                vec![
                    TxnOp::get(
                        self.keys.actives(job),
                        Some(GetOptions::new().with_prefix()),
                    ),
                    TxnOp::get(self.keys.histories(job), Some(newest)),
                ],
            )
            .await?;
        let mut runs: Vec<RunRecord> = found
            .iter()
            .flatten()
            .filter_map(|kv| parse(kv).ok())
            .collect();
        runs.sort_by(|a, b| b.key.run_id.cmp(&a.key.run_id));
        runs.truncate(limit);
        Ok(runs)
    }

    async fn active(&self, job: &str) -> Result<Vec<RunRecord>> {
        self.active_runs(job).await
    }

    async fn find_run(&self, jobs: &[&str], run_id: &str) -> Result<Option<RunRecord>> {
        for chunk in jobs.chunks(JOBS_PER_TXN) {
            let gets = chunk
                .iter()
                .flat_map(|job| {
                    [
                        TxnOp::get(self.keys.history(job, run_id), None),
                        TxnOp::get(self.keys.active(job, run_id), None),
                    ]
                })
                .collect();
            let found = self.get_together("look up run", gets).await?;
            if let Some(kv) = found.iter().flatten().next() {
                return parse(kv).map(Some);
            }
        }
        Ok(None)
    }
}
