//! The supervisor's entry point: `bgsched` re-executed with the hidden
//! [`SUPERVISE_COMMAND`] by a scheduler, reading its run spec from an
//! inherited descriptor (see [`super::spawn_supervisor`]) or, started
//! ahead of its tick, from the scheduler's hand-over (see `waiting`). One
//! run, recorded through the backend the spec names.

use super::waiting::{wait_for_run, CGROUP_AHEAD_ENV, WAIT_ENV};
use super::{adopt_hold, read_spec, report, supervise, Echo};
use crate::coordination::etcd::EtcdRecorder;
use crate::coordination::{BackendSpec, CoordError, Outcome, RunRecorder, Standalone};
use crate::observe::log;
use tracing::Instrument;

/// The hidden subcommand a scheduler re-executes `bgsched` with.
pub const SUPERVISE_COMMAND: &str = "__supervise";

/// Why a supervisor could not do its run.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Started by hand, or with a bad spec.
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Backend(#[from] CoordError),
    #[error("cannot start the supervisor's runtime: {0}")]
    Runtime(std::io::Error),
}

/// Supervise the one run the inherited spec describes.
pub fn main() -> Result<(), EntryError> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(EntryError::Runtime)
    };
    let (spec, hold, seat, runtime) = match std::env::var_os(WAIT_ENV) {
        // Started ahead of its tick: the start-up comes first, then the
        // wait for the run (see `waiting`).
        Some(format) => {
            // SAFETY: single-threaded at this point; no runtime has started yet.
            unsafe { std::env::remove_var(WAIT_ENV) };
            log::init(format == "json", "info");
            let runtime = runtime()?;
            if let Some(parent) = std::env::var_os(CGROUP_AHEAD_ENV) {
                // SAFETY: as above.
                unsafe { std::env::remove_var(CGROUP_AHEAD_ENV) };
                super::contain::enter_ready_cgroup(std::path::Path::new(&parent));
            }
            match wait_for_run().map_err(EntryError::Spec)? {
                Some((spec, lock, seat)) => (spec, lock, seat, runtime),
                None => {
                    super::contain::discard_ready_cgroup();
                    return Ok(());
                }
            }
        }
        None => {
            let spec = read_spec().map_err(EntryError::Spec)?;
            let hold = adopt_hold(spec.hold_fd);
            let seat = adopt_hold(spec.seat_fd);
            log::init(spec.log_json, "info");
            (spec, hold, seat, runtime()?)
        }
    };
    let span = super::run_span(&spec);
    runtime.block_on(
        async {
            match &spec.backend {
                BackendSpec::Standalone {
                    state_dir,
                    history_limit,
                } => {
                    let state = Standalone::open(state_dir, *history_limit)?;
                    let mut recorder = state.recorder(&spec.key.job, &spec.key.run_id);
                    let done = supervise(&spec, &mut recorder, hold, seat, Echo::Log).await;
                    report::ended(&spec, &done.record, done.written, None);
                }
                BackendSpec::Etcd(cfg) => {
                    let Some((lease, granted_at)) = spec.lease else {
                        return Err(EntryError::Spec(format!(
                            "{SUPERVISE_COMMAND}: cluster run without a lease"
                        )));
                    };
                    match EtcdRecorder::start(
                        cfg,
                        &spec.key.job,
                        &spec.key.run_id,
                        lease,
                        granted_at,
                    ) {
                        Ok(mut recorder) => {
                            let done = supervise(&spec, &mut recorder, hold, seat, Echo::Log).await;
                            report::ended(&spec, &done.record, done.written, recorder.handback());
                        }
                        Err(e) => {
                            // The command was fine; the scheduler was too
                            // slow to hand the run over: the tick is dropped.
                            tracing::error!(job = %spec.key.job, run_id = %spec.key.run_id, "not starting the job: {e}");
                            let mut rec = spec.unstarted(format!(
                                "{}: the scheduler could not start the run in time ({e})",
                                crate::model::OVERLOADED
                            ));
                            rec.outcome = Outcome::Missed;
                            rec.missed_ticks = Some(1);
                            EtcdRecorder::record_unstarted(cfg, &rec).await;
                            report::ended(&spec, &rec, false, None);
                        }
                    }
                }
            }
            Ok(())
        }
        .instrument(span),
    )
}
