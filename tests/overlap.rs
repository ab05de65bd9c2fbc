//! `overlap = "queue"` and `overlap = "replace"` on one machine. The jobs
//! write a ledger of their own starts and ends; the order of its lines is
//! the evidence.

mod common;

use common::*;

/// A job whose first run lasts `first_secs` (trapping SIGTERM to log it),
/// and whose later runs end at once. Each line: `<event> <n> <run id>`.
fn counting_job(name: &str, overlap: &str, first_secs: u32) -> String {
    format!(
        "[jobs.{name}]\nschedule = \"@daily\"\noverlap = \"{overlap}\"\nkill_grace = \"5s\"\n\
         shell = '''n=$(cat {{dir}}/n 2>/dev/null || echo 0); echo $((n+1)) > {{dir}}/n\n\
         echo \"start $n $BGSCHED_RUN_ID\" >> {{dir}}/ledger\n\
         if [ \"$n\" = 0 ]; then trap \"echo term $n $BGSCHED_RUN_ID >> {{dir}}/ledger; exit 0\" TERM; sleep {first_secs} & wait; fi\n\
         echo \"end $n $BGSCHED_RUN_ID\" >> {{dir}}/ledger'''\n"
    )
}

fn events(env: &Env) -> Vec<String> {
    env.lines("ledger")
        .iter()
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn queue_runs_one_waiting_run_right_after_the_active_one_and_skips_more() {
    let env = Env::new().config(&counting_job("q", "queue", 3));
    let first = env.trigger_detached("q");
    wait_until(PATIENCE, "the first run to start", || {
        events(&env) == ["start 0"]
    });
    // Takes the single waiting place: accepted, but does not start yet.
    let second = env.trigger_detached("q");
    assert_ne!(first, second);
    // The place is taken: a third is skipped, and says why.
    let out = env.cmd(&["trigger", "q"]).run().code(75);
    assert!(out.stderr.contains("already waiting"), "{out:?}");
    assert_eq!(events(&env), ["start 0"], "the queued run waits");
    wait_until(PATIENCE, "both runs to end", || events(&env).len() == 4);
    assert_eq!(events(&env), ["start 0", "end 0", "start 1", "end 1"]);
    wait_until(PATIENCE, "both records", || {
        let recs = env.records("q");
        [&first, &second].iter().all(|id| {
            recs.iter()
                .any(|r| r["run_id"] == id.as_str() && r["outcome"] == "success")
        })
    });
    assert!(env
        .records("q")
        .iter()
        .any(|r| r["outcome"] == "skipped"
            && r["reason"].as_str().unwrap().contains("already waiting")));
}

#[test]
fn replace_stops_the_active_run_gracefully_then_starts() {
    let env = Env::new().config(&counting_job("r", "replace", 600));
    let first = env.trigger_detached("r");
    wait_until(PATIENCE, "the first run to start", || {
        events(&env) == ["start 0"]
    });
    // In the foreground: returns once the replacement itself has run.
    env.cmd(&["trigger", "r"]).run().success();
    let second = env
        .records("r")
        .iter()
        .find(|r| r["run_id"] != first.as_str() && r["outcome"] == "success")
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .expect("the replacing run's record");
    assert_eq!(events(&env), ["start 0", "term 0", "start 1", "end 1"]);
    wait_until(PATIENCE, "the replaced run's record", || {
        env.records("r").iter().any(|r| {
            r["run_id"] == first.as_str()
                && r["reason"] == format!("replaced by run {second}: job stopped").as_str()
        })
    });
}

#[test]
fn a_scheduled_queue_job_never_overlaps_and_runs_back_to_back() {
    let env = Env::new().config(&format!(
        "[jobs.tight]\nschedule = \"@every 1s\"\noverlap = \"queue\"\n\
         shell = '{}; sleep 2.5; {}'\n",
        ledger_line("start", "ledger"),
        ledger_line("end", "ledger")
    ));
    let mut run = env.spawn_run("a");
    wait_until(PATIENCE, "three runs to end", || {
        env.lines("ledger")
            .iter()
            .filter(|l| l.starts_with("end"))
            .count()
            >= 3
    });
    run.signal(rustix::process::Signal::TERM);
    assert!(run.wait_exit(PATIENCE).is_some());
    // Strictly alternating start/end of one run at a time.
    let lines = env.lines("ledger");
    let mut open: Option<String> = None;
    for line in &lines {
        let f: Vec<&str> = line.split(' ').collect();
        match (f[0], &open) {
            ("start", None) => open = Some(f[3].to_string()),
            ("end", Some(id)) if id == f[3] => open = None,
            _ => panic!("runs overlap: {lines:#?}"),
        }
    }
    // Ticks that found the waiting place taken were skipped and recorded.
    assert!(env
        .records("tight")
        .iter()
        .any(|r| r["outcome"] == "skipped"));
}
