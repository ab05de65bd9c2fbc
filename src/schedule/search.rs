//! Finding the next fire in the job's time zone, across daylight-saving
//! changes: a fire in a skipped hour moves to the end of the gap; one in
//! a repeated hour fires once.

use super::*;

/// How far ahead a fall-back transition can make a wildcard job's second
/// pass over a repeated hour come before matches later on the wall clock.
/// Must exceed the largest fold; real ones are 30 minutes to 2 hours.
pub(super) const LOOKAHEAD: TimeDelta = TimeDelta::hours(3);

/// Offsets of real zones stay within this of UTC, so `naive ± BRACKET`
/// read as UTC brackets every instant whose wall time is `naive`.
pub(super) const BRACKET_SECS: i64 = 26 * 3600;

/// One `next_after` computation for a cron job.
pub(super) struct Search<'a> {
    pub(super) cron: &'a Cron,
    pub(super) tz: Tz,
    pub(super) fixed: bool,
    pub(super) after: DateTime<Utc>,
}

pub(super) fn find(cron: &Cron, from: &NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
    #[cfg(test)]
    CRONER_LOOKUPS.with(|n| n.set(n.get() + 1));
    cron.find_next_occurrence(from, inclusive).ok()
}

/// UTC offset in seconds in effect at `instant`.
pub(super) fn offset_at(tz: Tz, instant: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&instant.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

pub(super) fn shift(instant: DateTime<Utc>, offset: i64) -> Option<NaiveDateTime> {
    instant
        .naive_utc()
        .checked_add_signed(TimeDelta::try_seconds(offset)?)
}

pub(super) fn unshift(local: NaiveDateTime, offset: i64) -> Option<DateTime<Utc>> {
    Some(
        local
            .checked_sub_signed(TimeDelta::try_seconds(offset)?)?
            .and_utc(),
    )
}

/// The first whole second in `(lo, hi]` whose offset differs from `offset`,
/// which is the offset at `lo`; the offset at `hi` must differ. Transitions
/// fall on whole seconds, so flooring the bounds loses nothing.
pub(super) fn first_change(
    tz: Tz,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
    offset: i64,
) -> Option<DateTime<Utc>> {
    let (mut lo, mut hi) = (lo.timestamp(), hi.timestamp());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_at(tz, DateTime::from_timestamp(mid, 0)?) == offset {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// The transition instant that skips over the nonexistent wall time `naive`:
/// the first instant whose wall time is later than `naive`.
pub(super) fn gap_transition(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    let wall_time_after = |secs: i64| -> Option<bool> {
        let instant = DateTime::from_timestamp(secs, 0)?;
        Some(instant.with_timezone(&tz).naive_local() > naive)
    };
    let probe = naive.and_utc().timestamp();
    let (mut lo, mut hi) = (probe - BRACKET_SECS, probe + BRACKET_SECS);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if wall_time_after(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

impl Search<'_> {
    pub(super) fn next(&self) -> Option<DateTime<Utc>> {
        let offset_now = offset_at(self.tz, self.after);
        let local_after = shift(self.after, offset_now)?;
        let ahead = self
            .after
            .checked_add_signed(LOOKAHEAD)
            .unwrap_or(self.after);
        let offset_ahead = offset_at(self.tz, ahead);

        if !self.fixed && offset_ahead < offset_now {
            // A fall-back transition is near. Before it, wall time advances
            // from local_after as usual; after it, wall times at or below
            // local_after come round again and fire a wildcard job again,
            // so those cannot be found by searching onward from local_after.
            let transition = first_change(self.tz, self.after, ahead, offset_now)?;
            let fold_end = shift(transition, offset_now)?;
            if let Some(naive) = find(self.cron, &local_after, false) {
                if naive < fold_end {
                    return unshift(naive, offset_now);
                }
            }
            return self.scan(shift(transition, offset_ahead)?, true);
        }
        self.scan(local_after, false)
    }

    /// The first tick after `self.after` among wall-clock matches from
    /// `from` on, in wall-clock order. Callers start where no earlier wall
    /// time can map past `self.after`, and where wall-clock order is instant
    /// order, which holds unless a wildcard job is near a fall-back (handled
    /// in `next`).
    pub(super) fn scan(
        &self,
        mut from: NaiveDateTime,
        mut inclusive: bool,
    ) -> Option<DateTime<Utc>> {
        loop {
            let naive = find(self.cron, &from, inclusive)?;
            (from, inclusive) = (naive, false);
            match self.tz.from_local_datetime(&naive) {
                LocalResult::Single(instant) => {
                    let instant = instant.with_timezone(&Utc);
                    if instant > self.after {
                        return Some(instant);
                    }
                }
                LocalResult::Ambiguous(earlier, later) => {
                    let (earlier, later) = (earlier.with_timezone(&Utc), later.with_timezone(&Utc));
                    if earlier > self.after {
                        return Some(earlier);
                    }
                    if !self.fixed && later > self.after {
                        return Some(later);
                    }
                    if self.fixed {
                        // Every repeated wall time already fired in its
                        // first pass: resume after the fold.
                        let offset = offset_at(self.tz, earlier);
                        let transition = first_change(self.tz, earlier, later, offset)?;
                        let fold_end = shift(transition, offset)?;
                        if fold_end > naive {
                            (from, inclusive) = (fold_end, true);
                        }
                    }
                }
                LocalResult::None => {
                    let transition = gap_transition(self.tz, naive)?;
                    if self.fixed && transition > self.after {
                        return Some(transition);
                    }
                    let gap_end = shift(transition, offset_at(self.tz, transition))?;
                    if gap_end > naive {
                        (from, inclusive) = (gap_end, true);
                    }
                }
            }
        }
    }
}
