//! The job command of `examples/bench.rs`: `bench_stamp <file> [<tag>]`
//! (the tag defaults to `$BGSCHED_JOB`).
//!
//! Reads CLOCK_REALTIME as its first act, then appends one line
//! `tag now_ns tick instance trigger` to `<file>` with a single O_APPEND
//! write. The tick is `$BGSCHED_SCHEDULED_AT` (bgsched sets it; the bench's
//! baselines set it to the tick they aimed at). It is a separate, std-only
//! binary because exec cost counts in every measured lateness: the bench
//! binary itself (tonic, etcd-client, ~40k relocations) takes about 0.9 ms
//! longer to reach `main` than this one.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

#[allow(dead_code)]
fn main() {
    std::process::exit(stamp(1));
}

/// The stamp, with the file and tag after the first `skip` arguments.
pub fn stamp(skip: usize) -> i32 {
    let now = SystemTime::now();
    let ns = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut args = std::env::args_os().skip(skip);
    let Some(file) = args.next() else {
        eprintln!("usage: bench_stamp <file> [<tag>]");
        return 2;
    };
    let tag = args
        .next()
        .or_else(|| std::env::var_os("BGSCHED_JOB"))
        .unwrap_or_else(|| "-".into());
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "-".into());
    let line = format!(
        "{} {ns} {} {} {}\n",
        tag.to_string_lossy(),
        var("BGSCHED_SCHEDULED_AT"),
        var("BGSCHED_INSTANCE"),
        var("BGSCHED_TRIGGER")
    );
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    i32::from(written.is_err())
}
