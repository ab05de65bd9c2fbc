//! Placement (`run_on`): which member executes a claimed run, from what
//! every replica watches of the members (`P/members/`: labels, capacity,
//! leaving) and of the running markers (`P/active/`: who runs what); and a
//! member's side of it, its assignments (`P/assign/<member>/`).

use super::*;
use crate::config::RunOn;
use crate::coordination::{Assignment, Where};
use std::collections::BTreeMap;

/// What a member offers placement, in its `P/members/<instance>` value.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Offer {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u32>,
    /// Stopping (SIGTERM): its runs finish, it takes no new ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// How long a taken assignment is remembered: longer than its key can
/// live (the run's final record deletes it; else its lease expires).
const TAKEN_KEPT: Duration = Duration::from_secs(3600);

/// Reservations older than this are forgotten: a claim that went through
/// shows as a marker long before.
const RESERVATION_KEPT: Duration = Duration::from_secs(30);

/// The members and their active runs as this replica sees them.
#[derive(Default)]
pub(super) struct Placement {
    state: Mutex<View>,
}

#[derive(Default)]
struct View {
    members: BTreeMap<String, MemberInfo>,
    /// Run id → the member its running marker names.
    active: HashMap<String, String>,
    /// Runs placed by a claim not yet seen as a marker: run id → member.
    reserved: HashMap<String, (String, Instant)>,
    /// Placements made by this replica, per member (a counter).
    placed: BTreeMap<String, u64>,
}

impl View {
    fn load(&self, member: &str) -> usize {
        self.active.values().filter(|m| *m == member).count()
            + self.reserved.values().filter(|(m, _)| m == member).count()
    }
}

impl Placement {
    pub(super) fn members_are(&self, members: impl IntoIterator<Item = MemberInfo>) {
        let mut v = self.state.lock().expect("placement lock");
        v.members = members
            .into_iter()
            .map(|m| (m.instance.clone(), m))
            .collect();
    }

    pub(super) fn member_put(&self, m: MemberInfo) {
        let mut v = self.state.lock().expect("placement lock");
        v.members.insert(m.instance.clone(), m);
    }

    pub(super) fn member_gone(&self, name: &str) {
        self.state
            .lock()
            .expect("placement lock")
            .members
            .remove(name);
    }

    pub(super) fn markers_are(&self, markers: impl IntoIterator<Item = RunRecord>) {
        let mut v = self.state.lock().expect("placement lock");
        v.active = markers
            .into_iter()
            .map(|r| (r.key.run_id, r.key.instance))
            .collect();
    }

    pub(super) fn marker_put(&self, rec: &RunRecord) {
        let mut v = self.state.lock().expect("placement lock");
        v.reserved.remove(&rec.key.run_id);
        v.active
            .insert(rec.key.run_id.clone(), rec.key.instance.clone());
    }

    pub(super) fn marker_gone(&self, run_id: &str) {
        let mut v = self.state.lock().expect("placement lock");
        v.reserved.remove(run_id);
        v.active.remove(run_id);
    }

    /// The claim of `run_id` placed nothing (refused, skipped, queued).
    pub(super) fn release(&self, run_id: &str) {
        self.state
            .lock()
            .expect("placement lock")
            .reserved
            .remove(run_id);
    }

    /// Choose the member for `run_id` and count the run on it at once, so
    /// the claims of one tick in flight together spread. `Err`: why none.
    pub(super) fn choose(
        &self,
        me: &str,
        run_on: &RunOn,
        asked: Option<&Where>,
        run_id: &str,
    ) -> std::result::Result<(String, Option<String>), String> {
        let asked = asked.filter(|w| !w.is_default());
        let Some(rule) = placement_rule(run_on, asked) else {
            return Ok((me.to_string(), None));
        };
        let mut v = self.state.lock().expect("placement lock");
        v.reserved
            .retain(|_, (_, at)| at.elapsed() < RESERVATION_KEPT);
        let avoid = asked.map_or(&[][..], |w| &w.avoid[..]);
        let mut matching = 0;
        let mut best: Option<((usize, u64), &str)> = None;
        for (name, m) in &v.members {
            let offer = &m.offer;
            if avoid.contains(name) || !rule.admits(name, &offer.labels) {
                continue;
            }
            // Leaving, or from before placement (nothing to address).
            if offer.leaving || m.process.is_none() {
                continue;
            }
            matching += 1;
            let load = v.load(name);
            if offer.max_runs.is_some_and(|max| load >= max as usize) {
                continue;
            }
            // Ties go to the member placed on least so far, then by name:
            // idle members take turns.
            let rank = (load, v.placed.get(name).copied().unwrap_or(0));
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, name));
            }
        }
        let Some((_, name)) = best else {
            return Err(match matching {
                0 => format!("no live member matches {}", rule.describe(avoid)),
                n => format!(
                    "all {n} member(s) matching {} are full (max_runs)",
                    rule.describe(avoid)
                ),
            });
        };
        let name = name.to_string();
        let process = v.members.get(&name).and_then(|m| m.process.clone());
        v.reserved
            .insert(run_id.to_string(), (name.clone(), Instant::now()));
        *v.placed.entry(name.clone()).or_default() += 1;
        Ok((name, process))
    }

    /// Per live member: its active runs.
    pub fn per_member(&self) -> Vec<(String, usize)> {
        let v = self.state.lock().expect("placement lock");
        v.members
            .keys()
            .map(|n| (n.clone(), v.active.values().filter(|m| *m == n).count()))
            .collect()
    }
}

/// Which members may take a run.
#[derive(Debug, PartialEq)]
enum Rule<'a> {
    Any,
    Labels(&'a BTreeMap<String, String>),
    On(&'a str),
}

impl Rule<'_> {
    fn admits(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Rule::Any => true,
            Rule::Labels(want) => want.iter().all(|(k, v)| labels.get(k) == Some(v)),
            Rule::On(on) => *on == name,
        }
    }

    fn describe(&self, avoid: &[String]) -> String {
        let what = match self {
            Rule::Any => "run_on = \"any\"".to_string(),
            Rule::Labels(l) => format!("labels {}", crate::config::label_words(l)),
            Rule::On(on) => format!("the name {on}"),
        };
        match avoid {
            [] => what,
            a => format!("{what} other than {}", a.join(", ")),
        }
    }
}

/// The rule for a run: a manual run's ask over the job's `run_on`; `None`:
/// the leader runs it.
fn placement_rule<'a>(run_on: &'a RunOn, asked: Option<&'a Where>) -> Option<Rule<'a>> {
    if let Some(w) = asked {
        if let Some(on) = &w.on {
            return Some(Rule::On(on));
        }
        if !w.labels.is_empty() {
            return Some(Rule::Labels(&w.labels));
        }
    }
    match run_on {
        // A retry of a lost run (it avoids a member) of a leader job does
        // not happen: such runs are not retried elsewhere.
        RunOn::Leader => None,
        RunOn::Any => Some(Rule::Any),
        RunOn::Labels(l) => Some(Rule::Labels(l)),
    }
}

impl Etcd {
    /// This member's offer, sent with every member key from now on.
    pub fn offer(&self, offer: Offer) {
        *self.offer.lock().expect("offer lock") = offer;
    }

    /// The active runs of each live member, as this replica sees the
    /// running markers (for `/metrics`).
    pub fn active_per_member(&self) -> Vec<(String, usize)> {
        self.placement.per_member()
    }

    /// Stream the assignments of `instance`: those already waiting, then
    /// each new one (re-listed when the watch breaks; the take decides).
    pub(super) fn watch_assignments(&self, instance: &str) -> mpsc::Receiver<Assignment> {
        let (tx, rx) = mpsc::channel(1024);
        let task = tokio::spawn(super::watches::stream_puts(
            self.client.clone(),
            self.keys.assigns(instance),
            tx,
        ));
        self.watch_tasks
            .lock()
            .expect("watch tasks lock")
            .push(task);
        rx
    }

    /// Take `a` over: it is for this process and not taken yet. Its lease
    /// is renewed at once, so this member's clock counts the hold from its
    /// own renewal (the leader's grant instant is another machine's clock);
    /// a lease already gone means the leader records the run lost.
    pub(super) async fn take(&self, a: &Assignment) -> Result<Option<Hold>> {
        if a.process != self.process {
            return Ok(None);
        }
        {
            let mut taken = self.taken.lock().expect("taken lock");
            taken.retain(|_, at| at.elapsed() < TAKEN_KEPT);
            if taken.insert(a.key.run_id.clone(), Instant::now()).is_some() {
                return Ok(None);
            }
        }
        // A renewal that fails may have met an etcd member going down (the
        // stream is opened anew on a healthy one): tried again briefly.
        for wait in [0, 100, 200, 400] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if let Some(granted_at) = self.renew_lease(a.lease).await {
                return Ok(Some(Hold::Lease {
                    id: a.lease,
                    granted_at,
                }));
            }
        }
        Ok(None)
    }

    /// Rewrite this member's key as leaving, so the leader places nothing
    /// more here.
    pub(super) async fn mark_leaving(&self) {
        self.offer.lock().expect("offer lock").leaving = true;
        let guard = self.session.lock().await;
        let Some(s) = guard.as_ref() else { return };
        let value = {
            let mut m = s.member.lock().expect("member lock");
            m.offer.leaving = true;
            m.clock = Some(Utc::now());
            json(&*m)
        };
        let key = self
            .keys
            .member(&s.member.lock().expect("member lock").instance);
        let put = self
            .client
            .clone()
            .put(key, value, Some(PutOptions::new().with_lease(s.lease)))
            .await;
        if let Err(e) = put {
            tracing::warn!("could not tell the other members this one is leaving: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, labels: &[(&str, &str)], max_runs: Option<u32>) -> MemberInfo {
        MemberInfo {
            instance: name.into(),
            host: "h".into(),
            pid: 1,
            since: Utc::now(),
            config_hash: None,
            clock: None,
            process: Some(format!("p-{name}")),
            offer: Offer {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                max_runs,
                leaving: false,
            },
        }
    }

    #[test]
    fn claims_in_flight_together_spread_over_the_members_with_the_fewest_runs() {
        let p = Placement::default();
        p.members_are([
            member("a", &[], None),
            member("b", &[], None),
            member("c", &[], None),
        ]);
        let mut on = Vec::new();
        for i in 0..9 {
            on.push(
                p.choose("a", &RunOn::Any, None, &format!("r{i}"))
                    .unwrap()
                    .0,
            );
        }
        for m in ["a", "b", "c"] {
            assert_eq!(on.iter().filter(|o| *o == m).count(), 3, "{on:?}");
        }
        // A refused claim gives its place back: the member with the fewest
        // runs takes the next, whatever it was placed before.
        p.release("r0");
        assert_eq!(p.choose("a", &RunOn::Any, None, "r9").unwrap().0, "a");
        // Idle members take turns.
        let p = Placement::default();
        p.members_are([member("a", &[], None), member("b", &[], None)]);
        let turns: Vec<String> = (0..4)
            .map(|i| {
                let id = format!("t{i}");
                let m = p.choose("a", &RunOn::Any, None, &id).unwrap().0;
                p.release(&id);
                m
            })
            .collect();
        assert_eq!(turns, ["a", "b", "a", "b"]);
    }

    #[test]
    fn labels_capacity_leaving_and_avoid_narrow_the_choice_and_say_why() {
        let p = Placement::default();
        let mut leaving = member("c", &[("zone", "a")], None);
        leaving.offer.leaving = true;
        p.members_are([
            member("a", &[("zone", "a")], Some(1)),
            member("b", &[("zone", "b")], None),
            leaving,
        ]);
        let zone_a = RunOn::Labels([("zone".to_string(), "a".to_string())].into());
        assert_eq!(p.choose("b", &zone_a, None, "r1").unwrap().0, "a");
        assert_eq!(
            p.choose("b", &zone_a, None, "r2").unwrap_err(),
            "all 1 member(s) matching labels zone=a are full (max_runs)"
        );
        let zone_z = RunOn::Labels([("zone".to_string(), "z".to_string())].into());
        assert_eq!(
            p.choose("b", &zone_z, None, "r3").unwrap_err(),
            "no live member matches labels zone=z"
        );
        let avoid = Where {
            avoid: vec!["b".into()],
            ..Where::default()
        };
        p.release("r1");
        assert_eq!(
            p.choose("b", &RunOn::Any, Some(&avoid), "r4").unwrap().0,
            "a"
        );
        // The leader's own jobs stay with it, whoever else is there.
        assert_eq!(p.choose("b", &RunOn::Leader, None, "r5").unwrap().0, "b");
        let on = Where {
            on: Some("b".into()),
            ..Where::default()
        };
        assert_eq!(
            p.choose("a", &RunOn::Leader, Some(&on), "r6").unwrap().0,
            "b"
        );
    }

    #[test]
    fn a_marker_seen_counts_in_place_of_its_reservation_and_its_end_frees_it() {
        let p = Placement::default();
        p.members_are([member("a", &[], Some(1)), member("b", &[], Some(1))]);
        let first = p.choose("a", &RunOn::Any, None, "r1").unwrap().0;
        let mut rec = RunRecord::not_run(
            crate::model::RunKey::new("j", Utc::now(), crate::model::Trigger::Schedule, &first),
            Outcome::Running,
            String::new(),
        );
        rec.key.run_id = "r1".into();
        p.marker_put(&rec);
        let second = p.choose("a", &RunOn::Any, None, "r2").unwrap().0;
        assert_ne!(first, second);
        assert!(p.choose("a", &RunOn::Any, None, "r3").is_err());
        p.marker_gone("r1");
        assert_eq!(p.choose("a", &RunOn::Any, None, "r3").unwrap().0, first);
    }
}
