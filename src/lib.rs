//! bgsched: a cron-style scheduler for background jobs.
//!
//! The binary (`src/main.rs`) is a thin shell over this library. See
//! `docs/ARCHITECTURE.md` for the map of the modules and how one tick flows
//! from the timer to a finished run record.

pub mod api;
pub mod cli;
pub mod config;
pub mod coordination;
pub mod dashboard;
pub mod executor;
pub mod model;
pub mod notify;
pub mod observe;
pub mod reload;
pub mod schedule;
pub mod scheduler;
pub mod signals;
