//! What is due: the ticks to fire, catch up or record missed, as pure
//! functions of a job, its first due tick and the time.

use super::*;

/// Missed ticks counted one by one before the count is reported as a bound.
pub(super) const MISSED_SCAN_LIMIT: u64 = 10_000;

/// What to do with the ticks of one job that are due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePlan {
    /// Ticks to fire, oldest first, and as what: at most one catch-up (the
    /// newest missed tick) and at most one on-time tick.
    pub fires: Vec<Planned>,
    /// Ticks passed over without a run: count, oldest, newest.
    pub missed: Option<(u64, DateTime<Utc>, DateTime<Utc>)>,
    /// The job's next tick after these.
    pub next: Option<DateTime<Utc>>,
}

/// Decide what to do when `first_due` (and maybe later ticks) of `job` are
/// due at `now`. A tick at most [`LATE_TOLERANCE`] late fires as scheduled.
/// Of the ticks before it (missed: the scheduler was down, stalled, or
/// leadership changed hands), the newest fires once as a catch-up if it is
/// within the job's `catchup` window; the others are recorded as missed.
pub fn plan_due(job: &Job, first_due: DateTime<Utc>, now: DateTime<Utc>) -> DuePlan {
    // The newest three due ticks (newest last) and how many there are.
    let mut tail = vec![first_due];
    let mut count: u64 = 1;
    let push = |tail: &mut Vec<DateTime<Utc>>, t| {
        if tail.len() == 3 {
            tail.remove(0);
        }
        tail.push(t);
    };
    for n in job.schedule.iter_after(first_due).take_while(|n| *n <= now) {
        if count >= MISSED_SCAN_LIMIT {
            // A long outage: jump to the ticks near `now` instead of walking
            // every tick in between.
            let window = chrono::Duration::from_std(job.catchup + LATE_TOLERANCE)
                .unwrap_or(chrono::Duration::zero());
            let from = now - window - chrono::Duration::seconds(1);
            for t in job.schedule.iter_after(from).take_while(|t| *t <= now) {
                push(&mut tail, t);
                count += 1;
            }
            break;
        }
        push(&mut tail, n);
        count += 1;
    }
    let latest = *tail.last().expect("at least one due tick");
    let late = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
    // `missed` holds the due ticks that will not fire on time, newest last.
    let (on_time, missed_ticks, missed_count) = if late(latest) <= LATE_TOLERANCE {
        (Some(latest), &tail[..tail.len() - 1], count - 1)
    } else {
        (None, &tail[..], count)
    };
    let mut fires = Vec::new();
    let mut missed = None;
    if let Some(&newest) = missed_ticks.last() {
        if late(newest) <= job.catchup {
            fires.push((newest, Trigger::Catchup));
            if let Some(&before) = missed_ticks.iter().rev().nth(1) {
                missed = Some((missed_count - 1, first_due, before));
            }
        } else {
            missed = Some((missed_count, first_due, newest));
        }
    }
    if let Some(t) = on_time {
        fires.push((t, Trigger::Schedule));
    }
    DuePlan {
        fires,
        missed,
        next: job.schedule.next_after(latest),
    }
}

/// The trigger a due fire still goes out as at `now`, or `None` if it is
/// too late for it: beyond the job's catch-up window. A scheduled tick
/// more than [`LATE_TOLERANCE`] late goes out as a catch-up.
pub(super) fn in_time(
    job: &Job,
    tick: DateTime<Utc>,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Option<Trigger> {
    let late = (now - tick).to_std().unwrap_or_default();
    if late > job.catchup.max(LATE_TOLERANCE) {
        return None;
    }
    Some(if late > LATE_TOLERANCE && trigger == Trigger::Schedule {
        Trigger::Catchup
    } else {
        trigger
    })
}

/// Why ticks passed without a run (the wording of their `missed` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MissedWhy {
    /// No leader was firing: none elected, or this one just took over.
    Idle,
    /// This leader held its fires back while fenced.
    HeldBack,
    /// This leader's claims kept failing on backend errors.
    ClaimFailing,
    /// A later tick was claimed first.
    Superseded,
    /// This leader was firing but could not start them in time.
    Overloaded,
}

/// Ticks passed over: count, oldest, newest.
pub(super) type Missed = (u64, DateTime<Utc>, DateTime<Utc>);

/// Missed ticks with why, to record once the job's claims are done.
pub(super) type MissedEntry = (Missed, MissedWhy);

/// Ticks of a plan that came due after this leader began firing were missed
/// because it could not keep up, not because nothing was firing.
pub(super) fn missed_why((_, oldest, _): Missed, began: DateTime<Utc>) -> MissedWhy {
    if oldest > began {
        MissedWhy::Overloaded
    } else {
        MissedWhy::Idle
    }
}

/// The clock may be this far off between turns (or a last tick ahead)
/// before it is reported: the same second that counts a tick on time.
pub(super) fn chrono_tolerance() -> chrono::Duration {
    chrono::Duration::from_std(LATE_TOLERANCE).unwrap_or_default()
}

pub(super) fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Pending ticks: (next tick, index into the scheduled jobs).
pub(super) type Due = BinaryHeap<Reverse<(DateTime<Utc>, usize)>>;

/// The jobs that fire on their schedule, in a stable order for [`Due`].
pub(super) fn scheduled(config: &Config) -> Vec<&Job> {
    config.jobs.values().filter(|j| j.enabled).collect()
}

/// The pending ticks after a reload from the jobs `old` to `new`. A job
/// whose schedule (and time zone) is unchanged keeps its pending tick; a
/// new, re-enabled or rescheduled job starts at its first tick after
/// `now`, so ticks of a new schedule that lie before the reload are
/// neither caught up nor recorded missed, and a tick already fired (all
/// are at most `now`) cannot come again.
pub(super) fn reschedule(old: &[&Job], due: &Due, new: &[&Job], now: DateTime<Utc>) -> Due {
    let pending: HashMap<&str, (DateTime<Utc>, &Job)> = due
        .iter()
        .map(|Reverse((t, i))| (old[*i].name.as_str(), (*t, old[*i])))
        .collect();
    new.iter()
        .enumerate()
        .filter_map(|(i, job)| {
            let next = match pending.get(job.name.as_str()) {
                Some((t, was)) if was.schedule == job.schedule => Some(*t),
                _ => job.schedule.next_after(now),
            };
            next.map(|t| Reverse((t, i)))
        })
        .collect()
}

impl MissedWhy {
    pub(super) fn cause(self) -> &'static str {
        match self {
            MissedWhy::Idle => "while nothing was firing",
            MissedWhy::HeldBack => "while the leader held its fires back (the backend could not vouch for its leadership: etcd had not confirmed its session lease in time)",
            MissedWhy::ClaimFailing => "while the leader's claims kept failing on backend errors",
            MissedWhy::Superseded => "unfired: a later tick was claimed first",
            MissedWhy::Overloaded => "while this leader was busy with other due work and could not start them in time",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Job;
    use chrono::TimeZone;

    fn job(schedule: &str, catchup: &str) -> Job {
        let text = format!(
            "[jobs.j]\nschedule = \"{schedule}\"\ncatchup = \"{catchup}\"\ncommand = [\"true\"]\n"
        );
        let config = crate::config::load_str(std::path::Path::new("t.toml"), text.as_bytes())
            .expect("valid config");
        config.jobs["j"].clone()
    }

    fn at(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(s.into())
    }

    #[test]
    fn an_on_time_tick_fires_as_scheduled() {
        let j = job("@every 10s", "1m");
        let plan = plan_due(&j, at(10), at(10) + chrono::Duration::milliseconds(3));
        assert_eq!(plan.fires, vec![(at(10), Trigger::Schedule)]);
        assert_eq!(plan.missed, None);
        assert_eq!(plan.next, Some(at(20)));
    }

    #[test]
    fn several_missed_ticks_coalesce_into_one_catchup_of_the_newest() {
        let j = job("@every 10s", "1m");
        let plan = plan_due(&j, at(10), at(45));
        assert_eq!(plan.fires, vec![(at(40), Trigger::Catchup)]);
        assert_eq!(plan.missed, Some((3, at(10), at(30))));
        assert_eq!(plan.next, Some(at(50)));
    }

    #[test]
    fn ticks_older_than_catchup_are_only_missed() {
        let j = job("@every 10s", "3s");
        let plan = plan_due(&j, at(10), at(45));
        assert_eq!(plan.fires, vec![]);
        assert_eq!(plan.missed, Some((4, at(10), at(40))));
        assert_eq!(plan.next, Some(at(50)));
    }

    #[test]
    fn catchup_zero_still_fires_a_tick_that_is_only_slightly_late() {
        let j = job("@every 10s", "0s");
        let plan = plan_due(&j, at(10), at(10) + chrono::Duration::milliseconds(400));
        assert_eq!(plan.fires, vec![(at(10), Trigger::Schedule)]);
        let plan = plan_due(&j, at(10), at(12));
        assert_eq!(plan.fires, vec![]);
        assert_eq!(plan.missed, Some((1, at(10), at(10))));
    }

    #[test]
    fn missed_ticks_before_an_on_time_tick_are_caught_up_once_then_it_fires() {
        let j = job("@every 10s", "1m");
        let plan = plan_due(&j, at(10), at(30));
        assert_eq!(
            plan.fires,
            vec![(at(20), Trigger::Catchup), (at(30), Trigger::Schedule)]
        );
        assert_eq!(plan.missed, Some((1, at(10), at(10))));
        let plan = plan_due(&j, at(20), at(30));
        assert_eq!(
            plan.fires,
            vec![(at(20), Trigger::Catchup), (at(30), Trigger::Schedule)]
        );
        assert_eq!(plan.missed, None);
    }

    #[test]
    fn a_reload_keeps_unchanged_ticks_and_starts_new_and_rescheduled_jobs_from_now() {
        let config = |text: &str| {
            crate::config::load_str(std::path::Path::new("t.toml"), text.as_bytes())
                .expect("valid config")
        };
        let old = config(
            "[jobs.same]\nschedule = \"@every 10s\"\ncommand = [\"true\"]\n\
             [jobs.moved]\nschedule = \"@every 10s\"\ncommand = [\"true\"]\n\
             [jobs.gone]\nschedule = \"@every 10s\"\ncommand = [\"true\"]\n",
        );
        let new = config(
            "[jobs.same]\nschedule = \"@every 10s\"\ncommand = [\"false\"]\n\
             [jobs.moved]\nschedule = \"@every 7s\"\ncommand = [\"true\"]\n\
             [jobs.added]\nschedule = \"@every 10s\"\ncommand = [\"true\"]\n\
             [jobs.off]\nschedule = \"@every 1s\"\nenabled = false\ncommand = [\"true\"]\n",
        );
        let (old_jobs, new_jobs) = (scheduled(&old), scheduled(&new));
        // `same` still has its tick at 20 pending though `now` is past 10:
        // it is kept, not recomputed.
        let due: Due = old_jobs
            .iter()
            .enumerate()
            .map(|(i, _)| Reverse((at(20), i)))
            .collect();
        let now = at(12);
        let rebuilt = reschedule(&old_jobs, &due, &new_jobs, now);
        let mut got: Vec<(&str, DateTime<Utc>)> = rebuilt
            .iter()
            .map(|Reverse((t, i))| (new_jobs[*i].name.as_str(), *t))
            .collect();
        got.sort();
        let seven = |t: DateTime<Utc>| new.jobs["moved"].schedule.next_after(t).unwrap();
        assert_eq!(
            got,
            vec![("added", at(20)), ("moved", seven(now)), ("same", at(20))]
        );
    }

    #[test]
    fn a_long_outage_is_not_walked_tick_by_tick() {
        let j = job("@every 1s", "1m");
        let start = at(0) + chrono::Duration::seconds(1);
        let now = start + chrono::Duration::days(30);
        let t = std::time::Instant::now();
        let plan = plan_due(&j, start, now);
        assert!(t.elapsed() < Duration::from_secs(5));
        let second = chrono::Duration::seconds(1);
        assert_eq!(
            plan.fires,
            vec![(now - second, Trigger::Catchup), (now, Trigger::Schedule)]
        );
        let (count, oldest, newest) = plan.missed.unwrap();
        assert!(count >= MISSED_SCAN_LIMIT);
        assert_eq!(oldest, start);
        assert_eq!(newest, now - second * 2);
        assert_eq!(plan.next, Some(now + second));
    }
}
