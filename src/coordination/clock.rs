//! How far this replica's wall clock is from the other replicas'.
//!
//! etcd has no clock of its own to compare with, so the replicas compare
//! with each other: every replica rewrites its `P/members/<instance>` key
//! with its wall clock (`MemberInfo::clock`) at each heartbeat, and every
//! replica watches `P/members/`. When the watch delivers another member's
//! write, `its clock − my clock at receipt` is that member's offset from
//! this one, short by the delivery delay (the put and the watch event: a
//! few milliseconds, never negative). The median of the offsets of the
//! live members, this one included at 0, is where the group's clock is;
//! this replica's skew is its distance from that median. A replica more
//! than `max_clock_skew` off does not lead (see `Etcd::acquire_leadership`).
//!
//! A median needs a majority of agreeing clocks: with three replicas one
//! skewed clock is found out; with two that disagree neither can tell whose
//! clock is wrong, so both count as skewed and neither leads. A member
//! found out that way stays an outlier for this replica until its clock
//! agrees again, and an outlier is not counted: when one of three correct
//! replicas dies beside a skewed one, the correct survivor still knows whom
//! to believe and keeps leading, where a median of two would stop both.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// What this replica knows of its clock against the live members'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockVerdict {
    /// Just started: the members listed at start have not all published
    /// their clock since.
    Unknown,
    /// No other live member to compare with, or only `outliers`: members
    /// earlier found off the majority's clock.
    Alone { outliers: usize },
    /// Within the bound. `skew_ms`: this clock minus the group's median.
    Agrees { skew_ms: i64, others: usize },
    /// Beyond the bound.
    Skewed {
        skew_ms: i64,
        others: usize,
        bound: Duration,
    },
}

impl ClockVerdict {
    /// The measured skew in seconds, if there is one to report.
    pub fn skew_secs(&self) -> Option<f64> {
        match self {
            ClockVerdict::Agrees { skew_ms, .. } | ClockVerdict::Skewed { skew_ms, .. } => {
                Some(*skew_ms as f64 / 1000.0)
            }
            _ => None,
        }
    }

    pub fn is_skewed(&self) -> bool {
        matches!(self, ClockVerdict::Skewed { .. })
    }

    /// For logs and `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            ClockVerdict::Unknown => "not measured yet (waiting for the members' heartbeats)".into(),
            ClockVerdict::Alone { outliers: 0 } => "no other live member to compare with".into(),
            ClockVerdict::Alone { outliers } => format!(
                "no other live member to compare with but {outliers} whose clock was found off the majority's earlier"
            ),
            ClockVerdict::Agrees { skew_ms, others } => format!(
                "agrees with {others} other live member(s) (skew {})",
                signed(*skew_ms)
            ),
            ClockVerdict::Skewed {
                skew_ms,
                others,
                bound,
            } => format!(
                "skewed: this clock is {} {} the median of {} live members' clocks, beyond max_clock_skew = {}",
                humantime::format_duration(Duration::from_millis(skew_ms.unsigned_abs())),
                if *skew_ms > 0 { "ahead of" } else { "behind" },
                others + 1,
                humantime::format_duration(*bound)
            ),
        }
    }
}

/// "+3ms", "-1h 2s".
fn signed(ms: i64) -> String {
    let d = humantime::format_duration(Duration::from_millis(ms.unsigned_abs()));
    if ms < 0 {
        format!("-{d}")
    } else {
        format!("+{d}")
    }
}

/// The offsets measured so far; fed by the members watch.
pub struct ClockWatch {
    bound: Duration,
    /// Members publish this often; one not heard from for three periods
    /// is not counted (its key expires with its lease anyway).
    heartbeat: Duration,
    state: Mutex<State>,
}

struct State {
    /// Whether the members were listed yet: until then, who is there to
    /// hear from is not known.
    listed: bool,
    started: Instant,
    /// Members present when the watch started and not heard from since.
    pending: HashSet<String>,
    /// Per other member: its offset from this clock (ms) and when measured.
    offsets: HashMap<String, (i64, Instant)>,
    /// Members found beyond the bound from the median of three or more
    /// clocks, until their clock agrees again.
    outliers: HashSet<String>,
}

impl ClockWatch {
    pub fn new(bound: Duration, heartbeat: Duration) -> Self {
        ClockWatch {
            bound,
            heartbeat,
            state: Mutex::new(State {
                listed: false,
                started: Instant::now(),
                pending: HashSet::new(),
                offsets: HashMap::new(),
                outliers: HashSet::new(),
            }),
        }
    }

    /// The members found when the watch (re)started: the verdict waits for
    /// each to publish once, or for a few heartbeats.
    pub fn expect(&self, members: impl IntoIterator<Item = String>) {
        let mut s = self.state.lock().expect("clock lock");
        s.listed = true;
        s.started = Instant::now();
        s.pending = members.into_iter().collect();
    }

    /// A member published `offset_ms` = its clock − this clock at receipt.
    pub fn observed(&self, member: &str, offset_ms: i64) {
        let mut s = self.state.lock().expect("clock lock");
        s.pending.remove(member);
        s.offsets
            .insert(member.to_string(), (offset_ms, Instant::now()));
    }

    pub fn gone(&self, member: &str) {
        let mut s = self.state.lock().expect("clock lock");
        s.pending.remove(member);
        s.offsets.remove(member);
    }

    pub fn verdict(&self) -> ClockVerdict {
        let mut s = self.state.lock().expect("clock lock");
        let fresh = self.heartbeat * 3;
        let live: Vec<(String, i64)> = s
            .offsets
            .iter()
            .filter(|(_, (_, at))| at.elapsed() <= fresh)
            .map(|(m, (o, _))| (m.clone(), *o))
            .collect();
        if !s.listed || (!s.pending.is_empty() && s.started.elapsed() < fresh) {
            return ClockVerdict::Unknown;
        }
        let bound = self.bound.as_millis() as i64;
        let offsets: Vec<i64> = live.iter().map(|(_, o)| *o).collect();
        let centre = if live.len() >= 2 {
            Some(median(&offsets))
        } else {
            None
        };
        // A median says whose clock is off only when most clocks (this one
        // included) agree with it; with an even split nobody is marked and
        // both sides stay skewed, as with two.
        let centre = centre.filter(|m| {
            let near = offsets
                .iter()
                .chain([&0])
                .filter(|o| (*o - m).abs() <= bound);
            near.count() * 2 > offsets.len() + 1
        });
        for (member, offset) in &live {
            // Judged against three or more clocks; with fewer (or no
            // majority), a member is cleared only by agreeing with this one.
            let off = match centre {
                Some(m) => (offset - m).abs() > bound,
                None => offset.abs() > bound && s.outliers.contains(member),
            };
            if off {
                s.outliers.insert(member.clone());
            } else {
                s.outliers.remove(member);
            }
        }
        let counted: Vec<i64> = live
            .iter()
            .filter(|(m, _)| !s.outliers.contains(m))
            .map(|(_, o)| *o)
            .collect();
        match verdict(&counted, self.bound) {
            ClockVerdict::Alone { .. } => ClockVerdict::Alone {
                outliers: live.len(),
            },
            v => v,
        }
    }
}

/// The median of `others` and this clock (offset 0).
fn median(others: &[i64]) -> i64 {
    let mut all: Vec<i64> = others.to_vec();
    all.push(0);
    all.sort_unstable();
    let n = all.len();
    if n % 2 == 1 {
        all[n / 2]
    } else {
        (all[n / 2 - 1] + all[n / 2]) / 2
    }
}

/// The verdict from the other live members' offsets.
pub fn verdict(others: &[i64], bound: Duration) -> ClockVerdict {
    if others.is_empty() {
        return ClockVerdict::Alone { outliers: 0 };
    }
    let skew_ms = -median(others);
    let others = others.len();
    if skew_ms.unsigned_abs() as u128 > bound.as_millis() {
        ClockVerdict::Skewed {
            skew_ms,
            others,
            bound,
        }
    } else {
        ClockVerdict::Agrees { skew_ms, others }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const BOUND: Duration = Duration::from_secs(1);

    #[test]
    fn one_clock_an_hour_ahead_of_two_is_found_out_by_all_three() {
        // Seen from the skewed replica: both others are an hour behind.
        assert!(matches!(
            verdict(&[-HOUR + 3, -HOUR - 5], BOUND),
            ClockVerdict::Skewed { skew_ms, others: 2, .. } if (skew_ms - HOUR).abs() < 10
        ));
        // Seen from a correct one: the median is its own clock.
        assert!(matches!(
            verdict(&[HOUR, 4], BOUND),
            ClockVerdict::Agrees {
                skew_ms: -4,
                others: 2
            }
        ));
    }

    #[test]
    fn delivery_delay_within_the_bound_agrees() {
        assert!(matches!(
            verdict(&[-40, -120, 30], BOUND),
            ClockVerdict::Agrees { .. }
        ));
        assert_eq!(verdict(&[], BOUND), ClockVerdict::Alone { outliers: 0 });
    }

    #[test]
    fn two_replicas_that_disagree_both_count_as_skewed() {
        assert!(verdict(&[HOUR], BOUND).is_skewed());
        assert!(verdict(&[-HOUR], BOUND).is_skewed());
    }

    #[test]
    fn the_verdict_waits_for_members_listed_at_start_then_gives_up_on_them() {
        let w = ClockWatch::new(BOUND, Duration::from_millis(20));
        assert_eq!(w.verdict(), ClockVerdict::Unknown);
        w.expect(["b".to_string()]);
        assert_eq!(w.verdict(), ClockVerdict::Unknown);
        w.observed("b", 5);
        assert!(matches!(
            w.verdict(),
            ClockVerdict::Agrees { others: 1, .. }
        ));
        w.gone("b");
        assert_eq!(w.verdict(), ClockVerdict::Alone { outliers: 0 });
        w.expect(["c".to_string()]);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(w.verdict(), ClockVerdict::Alone { outliers: 0 });
    }

    #[test]
    fn a_member_found_off_by_three_clocks_stays_an_outlier_after_the_third_dies() {
        // This replica and "b" agree; "c" is an hour ahead.
        let w = ClockWatch::new(BOUND, Duration::from_secs(60));
        w.expect([]);
        w.observed("b", 4);
        w.observed("c", HOUR);
        assert!(matches!(w.verdict(), ClockVerdict::Agrees { .. }));
        w.gone("b");
        assert_eq!(w.verdict(), ClockVerdict::Alone { outliers: 1 });
        // Its clock fixed, "c" counts again.
        w.observed("c", 7);
        assert!(matches!(
            w.verdict(),
            ClockVerdict::Agrees { others: 1, .. }
        ));
        // Seen from the skewed replica itself: the two others were never
        // outliers, so with one of them gone it still stands skewed.
        let skewed = ClockWatch::new(BOUND, Duration::from_secs(60));
        skewed.expect([]);
        skewed.observed("a", -HOUR);
        skewed.observed("b", -HOUR + 4);
        assert!(skewed.verdict().is_skewed());
        skewed.gone("b");
        assert!(skewed.verdict().is_skewed());
    }

    #[test]
    fn an_even_split_of_clocks_marks_no_outlier_and_both_sides_stay_skewed() {
        // Two replicas an hour ahead of the two others: no majority agrees.
        let w = ClockWatch::new(BOUND, Duration::from_secs(60));
        w.expect([]);
        w.observed("b", 3);
        w.observed("c", HOUR);
        w.observed("d", HOUR + 2);
        assert!(w.verdict().is_skewed());
        w.gone("b");
        // Now three of four are left, two of them ahead: still no one to
        // trust over the others from this side.
        assert!(w.verdict().is_skewed());
    }
}
