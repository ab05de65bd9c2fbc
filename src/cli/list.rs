//! `bgsched list`: what is scheduled, what ran, what runs now.

use super::context::open_backend;
use super::{Cli, CliError};
use crate::observe::status::{self, ListView, UNKNOWN_HASH};
use crate::reload;
use chrono::{DateTime, SecondsFormat, Utc};

pub async fn list(cli: &Cli, json: bool) -> Result<(), CliError> {
    let (config, config_hash) = reload::load(&cli.config)?;
    let backend = open_backend(cli, &config).await?;
    let now = Utc::now();
    let view = status::build(&config, &config_hash, &backend, now).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view).expect("list view serializes")
        );
    } else {
        print_table(&view, now);
    }
    Ok(())
}

fn print_table(view: &ListView, now: DateTime<Utc>) {
    let leader = match &view.leader {
        Some(l) => format!(
            "{} (term {}, since {})",
            l.instance,
            l.term,
            l.since.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        None => "none (no `bgsched run` is firing jobs)".to_string(),
    };
    let place = match (&view.state_dir, &view.etcd_prefix) {
        (Some(dir), _) => format!("state: {dir}"),
        (None, Some(prefix)) => format!("etcd prefix: {prefix}"),
        (None, None) => String::new(),
    };
    println!("mode: {}   {place}   leader: {leader}", view.mode);
    if !view.members.is_empty() {
        let names: Vec<String> = view
            .members
            .iter()
            .map(|m| {
                let mut offer = String::new();
                if !m.offer.labels.is_empty() {
                    let labels = crate::config::label_words(&m.offer.labels);
                    offer.push_str(&format!(", labels {labels}"));
                }
                if let Some(max) = m.offer.max_runs {
                    offer.push_str(&format!(", max_runs {max}"));
                }
                if m.offer.leaving {
                    offer.push_str(", leaving");
                }
                format!(
                    "{} ({}, pid {}, config {}{offer})",
                    m.instance,
                    m.host,
                    m.pid,
                    m.config_hash.as_deref().unwrap_or(UNKNOWN_HASH)
                )
            })
            .collect();
        println!("members: {}", names.join(", "));
    }
    let leader_name = view.leader.as_ref().map(|l| l.instance.as_str());
    if view.configs_differ {
        let groups: Vec<String> = status::config_groups(&view.members)
            .iter()
            .map(|(hash, names)| {
                let names: Vec<String> = names
                    .iter()
                    .map(|n| match Some(*n) == leader_name {
                        true => format!("{n} (leader)"),
                        false => n.to_string(),
                    })
                    .collect();
                format!("{hash} on {}", names.join(", "))
            })
            .collect();
        println!(
            "warning: replicas run different configs: {}; reload (SIGHUP) or restart them with the same file",
            groups.join("; ")
        );
    }
    let leader_hash = view
        .members
        .iter()
        .find(|m| Some(m.instance.as_str()) == leader_name)
        .and_then(|m| m.config_hash.as_deref());
    if let Some(hash) = leader_hash.filter(|h| *h != view.config_hash) {
        println!(
            "warning: the leader fires from config {hash}, but this file is {}; reload the replicas to apply it",
            view.config_hash
        );
    }
    for text in &view.unreadable {
        println!("warning: {text}");
    }
    for job in &view.jobs {
        if let Some(ahead) = &job.last_tick_ahead {
            println!("warning: job {}: {ahead}", job.name);
        }
    }
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(["JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "STATE"]);
    for job in &view.jobs {
        let next = match &job.next_run {
            Some(t) => {
                let at = DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or(now);
                match job.active_from.filter(|f| *f > now) {
                    Some(_) => format!("{} ({}, when it becomes active)", t, relative(at - now)),
                    None => format!("{} ({})", t, relative(at - now)),
                }
            }
            None if !job.enabled => "-".to_string(),
            None if job.service.is_some() && job.paused.is_some() => "paused (service)".to_string(),
            None if job.service.is_some() => "service (always running)".to_string(),
            None if job.after.is_some() => "when its upstream ends".to_string(),
            None => match job.active_until.filter(|u| *u <= now) {
                Some(u) => format!(
                    "never (active until {}, {})",
                    in_zone(&job.timezone, u),
                    relative(u - now)
                ),
                None => "never".to_string(),
            },
        };
        // Both columns in the job's zone with its offset, as `next` prints.
        let zone: Option<chrono_tz::Tz> = job.timezone.parse().ok();
        // In a cluster, where it ran.
        let on = |r: &crate::coordination::RunRecord| match view.members.is_empty() {
            true => String::new(),
            false => format!(" on {}", r.key.instance),
        };
        let last = match &job.last_run {
            Some(r) => format!(
                "{} ({}) {}{}{}",
                relative(r.started_at - now),
                match zone {
                    Some(tz) => r
                        .started_at
                        .with_timezone(&tz)
                        .to_rfc3339_opts(SecondsFormat::Secs, false),
                    None => r.started_at.to_rfc3339_opts(SecondsFormat::Secs, false),
                },
                r.outcome,
                r.duration_ms
                    .map(|ms| format!(
                        " in {}",
                        humantime::format_duration(std::time::Duration::from_millis(ms))
                    ))
                    .unwrap_or_default(),
                on(r)
            ),
            None => "never".to_string(),
        };
        let state = match job.running.first() {
            Some(r) if job.service.is_some() => format!(
                "service up {} on {}, {} restart(s){}",
                relative(now - r.started_at).trim_start_matches("in "),
                r.key.instance,
                job.service.as_ref().map_or(0, |s| s.restarts),
                if job.paused.is_some() {
                    "; paused: not restarted when it exits"
                } else {
                    ""
                }
            ),
            Some(r) => format!(
                "running since {} on {}",
                relative(r.started_at - now),
                r.key.instance
            ),
            None => match &job.paused {
                Some(p) => format!(
                    "paused{} by {}{}",
                    p.until
                        .map(|u| format!(
                            " until {}",
                            u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ))
                        .unwrap_or_default(),
                    p.by,
                    if p.manual { "" } else { ", manual runs off" }
                ),
                None => job.state.to_string(),
            },
        };
        let mut skips = if job.recent_skips > 0 {
            format!(", {} skipped", job.recent_skips)
        } else {
            String::new()
        };
        // A job whose ticks all go unrun (no member matches it, it keeps
        // missing its time) shows it here, not only as "never".
        if job.recent_missed > 0 {
            skips.push_str(&format!(", {} missed", job.recent_missed));
        }
        let scheduled = match job.scheduled.first().and_then(|r| r.at) {
            Some(at) => format!(
                ", {} scheduled (next {})",
                job.scheduled.len(),
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => String::new(),
        };
        let unreadable = match job.unreadable.len() {
            0 => String::new(),
            1 => ", 1 unreadable state file (bgsched history)".to_string(),
            n => format!(", {n} unreadable state files (bgsched history)"),
        };
        table.add_row([
            job.name.clone(),
            format!("{} ({})", job.schedule, job.timezone),
            next,
            last,
            format!("{state}{skips}{scheduled}{unreadable}"),
        ]);
    }
    println!("{table}");
}

/// "in 4m", "3s ago": one coarse unit is enough to read at a glance. The
/// future rounds up, so a run due in 300ms is "in 1s", never "just now".
/// `t` in the zone named `zone` (UTC where that is not a zone).
fn in_zone(zone: &str, t: DateTime<Utc>) -> String {
    match zone.parse::<chrono_tz::Tz>() {
        Ok(tz) => t
            .with_timezone(&tz)
            .to_rfc3339_opts(SecondsFormat::Secs, false),
        Err(_) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

fn relative(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds();
    let secs = if ms > 0 { (ms + 999) / 1000 } else { ms / 1000 };
    let abs = secs.unsigned_abs();
    if abs == 0 {
        return "just now".to_string();
    }
    let amount = match abs {
        0..=59 => format!("{abs}s"),
        60..=3599 => format!("{}m", abs / 60),
        3600..=86_399 => format!("{}h{}m", abs / 3600, (abs % 3600) / 60),
        _ => format!("{}d", abs / 86_400),
    };
    if secs >= 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::relative;
    use chrono::Duration;

    #[test]
    fn the_future_is_never_just_now() {
        let ms = Duration::milliseconds;
        assert_eq!(relative(ms(300)), "in 1s");
        assert_eq!(relative(ms(1)), "in 1s");
        assert_eq!(relative(ms(59_001)), "in 1m");
        assert_eq!(relative(ms(0)), "just now");
        assert_eq!(relative(ms(-300)), "just now");
        assert_eq!(relative(ms(-1_500)), "1s ago");
        assert_eq!(relative(ms(-7_200_000)), "2h0m ago");
    }
}
