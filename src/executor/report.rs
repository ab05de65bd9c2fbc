//! What a supervisor tells the scheduler that started it, one line each on
//! its stdout: the job's pid once the job runs (a bare number), then the
//! run's outcome once it is recorded (a JSON object). The scheduler needs
//! the pid to clean up after a supervisor that dies, and the outcome for
//! its metrics and notifications, which is why the outcome line also
//! carries the record as written. The outcome line may hand back what the run held and no longer needs (in a cluster:
//! its lease, for the next claim; see `Coordinator::take_back`).

use super::RunSpec;
use crate::coordination::{Outcome, RunRecord};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ended {
    outcome: Outcome,
    duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handback: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<Box<RunRecord>>,
}

/// One line of a supervisor's report.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The job runs with this pid (= its process group).
    Started(i32),
    /// The run is over and recorded: how, how long it took, what it hands
    /// back, if anything, and the record.
    Ended(Outcome, Duration, Option<String>, Option<Box<RunRecord>>),
}

/// In the supervisor: report the final record, if a scheduler listens;
/// the record itself only if it was `written` (what was not recorded is
/// not notified either).
pub fn ended(spec: &RunSpec, record: &RunRecord, written: bool, handback: Option<String>) {
    if !spec.report_pid {
        return;
    }
    let line = Ended {
        outcome: record.outcome,
        duration_ms: record.duration_ms.unwrap_or(0),
        handback,
        record: written.then(|| Box::new(record.clone())),
    };
    let json = serde_json::to_string(&line).expect("report serializes");
    // Nobody listening any more (the scheduler died) is no reason to fail.
    let _ = writeln!(std::io::stdout(), "{json}").and_then(|()| std::io::stdout().flush());
}

/// In the scheduler: one line read from a supervisor.
pub fn parse(line: &str) -> Option<Report> {
    let line = line.trim();
    if let Ok(pid) = line.parse() {
        return Some(Report::Started(pid));
    }
    let ended: Ended = serde_json::from_str(line).ok()?;
    Some(Report::Ended(
        ended.outcome,
        Duration::from_millis(ended.duration_ms),
        ended.handback,
        ended.record,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lines_parse_and_anything_else_is_ignored() {
        assert_eq!(parse("4242\n"), Some(Report::Started(4242)));
        assert_eq!(
            parse(r#"{"outcome":"timed_out","duration_ms":1500}"#),
            Some(Report::Ended(
                Outcome::TimedOut,
                Duration::from_millis(1500),
                None,
                None
            ))
        );
        assert_eq!(
            parse(r#"{"outcome":"success","duration_ms":3,"handback":"lease 7 1700000000000"}"#),
            Some(Report::Ended(
                Outcome::Success,
                Duration::from_millis(3),
                Some("lease 7 1700000000000".into()),
                None
            ))
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse(""), None);
    }
}
