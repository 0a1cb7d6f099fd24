//! `tokenkeeper simulate`: the core's fleet simulation, in virtual time.

use std::time::{Duration, Instant};

use serde_json::json;
use tokenkeeper_core::Jitter;
use tokenkeeper_core::sim::{AuthorityModel, FleetConfig, Outage, simulate};

use crate::args::{ReportOutput, SimulateArgs};
use crate::error::CliError;
use crate::time::{human, parse_duration};

/// More instances than this would take long and much memory.
const MAX_INSTANCES: usize = 100_000;
/// More simulated time than this is refused (a month).
const MAX_HOURS: f64 = 24.0 * 31.0;

fn parse_outage(text: &str) -> Result<Outage, CliError> {
    let bad = || {
        CliError::usage(format!(
            "--outage wants START:DURATION (seconds, or with a unit: 90s, 30m, 2h), got {text:?}"
        ))
    };
    let (start, duration) = text.split_once(':').ok_or_else(bad)?;
    Ok(Outage {
        start: parse_duration(start).ok_or_else(bad)?,
        duration: parse_duration(duration).ok_or_else(bad)?,
    })
}

pub(crate) fn run(args: &SimulateArgs) -> Result<(), CliError> {
    if args.instances == 0 || args.instances > MAX_INSTANCES {
        return Err(CliError::usage(format!(
            "--instances must be between 1 and {MAX_INSTANCES}"
        )));
    }
    if !(args.hours > 0.0 && args.hours <= MAX_HOURS) {
        return Err(CliError::usage(format!(
            "--hours must be more than 0 and at most {MAX_HOURS}"
        )));
    }
    if args.ttl == 0 {
        return Err(CliError::usage("--ttl must be at least 1 second"));
    }
    let outages = args
        .outage
        .iter()
        .map(|o| parse_outage(o))
        .collect::<Result<Vec<_>, _>>()?;
    let duration = Duration::from_secs_f64(args.hours * 3_600.0);
    let jitter = args
        .jitter
        .map_or_else(Jitter::default, |s| Jitter::up_to(Duration::from_secs(s)));
    let config = FleetConfig {
        instances: args.instances,
        duration,
        start_spread: Duration::from_secs(args.start_spread),
        shared_cache: !args.no_shared_cache,
        authority: AuthorityModel {
            token_ttl: Duration::from_secs(args.ttl),
            outages: outages.clone(),
            ..AuthorityModel::default()
        },
        jitter,
        seed: args.seed,
        ..FleetConfig::default()
    };
    let started = Instant::now();
    let report = simulate(&config);
    let took = started.elapsed();
    let reads = report.reads_fresh + report.reads_stale + report.reads_expired + report.reads_none;
    match args.output {
        ReportOutput::Json => {
            let doc = json!({
                "instances": args.instances,
                "hours": args.hours,
                "ttl_secs": args.ttl,
                "jitter_max_secs": jitter.max_for(Duration::from_secs(args.ttl)).as_secs_f64(),
                "shared_cache": !args.no_shared_cache,
                "outages": outages.iter().map(|o| json!({
                    "start_secs": o.start.as_secs_f64(),
                    "duration_secs": o.duration.as_secs_f64(),
                })).collect::<Vec<_>>(),
                "seed": args.seed,
                "authority_requests": report.authority_requests,
                "authority_failures": report.authority_failures,
                "peak_requests_per_second": report.peak_requests_per_second,
                "peak_refreshes_per_second": report.peak_refreshes_per_second,
                "reads": {
                    "total": reads,
                    "fresh": report.reads_fresh,
                    "stale": report.reads_stale,
                    "expired": report.reads_expired,
                    "nothing": report.reads_none,
                },
                "cache_hits": report.cache_hits,
                "lease_waits": report.lease_waits,
                "recovery_after_outage_secs": report.recovery_after_outage.map(|d| d.as_secs_f64()),
                "wall_clock_secs": took.as_secs_f64(),
            });
            println!("{doc:#}");
        }
        ReportOutput::Text => {
            let pct = |n: u64| {
                if reads == 0 {
                    0.0
                } else {
                    n as f64 * 100.0 / reads as f64
                }
            };
            println!(
                "Simulated {} instances for {} ({} tokens, refresh jitter up to {}, {}){}",
                args.instances,
                human(duration),
                human(Duration::from_secs(args.ttl)),
                human(jitter.max_for(Duration::from_secs(args.ttl))),
                if args.no_shared_cache {
                    "each instance on its own"
                } else {
                    "one shared cache with a lease"
                },
                if outages.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", outages: {}",
                        outages
                            .iter()
                            .map(|o| format!("{} for {}", human(o.start), human(o.duration)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            println!(
                "  authority requests: {} total ({} failed), peak {} per second (refreshes: peak {} per second)",
                report.authority_requests,
                report.authority_failures,
                report.peak_requests_per_second,
                report.peak_refreshes_per_second
            );
            println!("  reads served:       {reads}");
            println!(
                "    fresh             {:>12} ({:.2}%)",
                report.reads_fresh,
                pct(report.reads_fresh)
            );
            println!(
                "    stale (grace)     {:>12} ({:.2}%)",
                report.reads_stale,
                pct(report.reads_stale)
            );
            println!(
                "    expired           {:>12} ({:.2}%)",
                report.reads_expired,
                pct(report.reads_expired)
            );
            println!(
                "    nothing           {:>12} ({:.2}%)",
                report.reads_none,
                pct(report.reads_none)
            );
            if !args.no_shared_cache {
                println!(
                    "  shared cache:       {} tokens taken from it, {} waits on the lease",
                    report.cache_hits, report.lease_waits
                );
            }
            if !outages.is_empty() {
                match report.recovery_after_outage {
                    Some(d) => println!(
                        "  after the last outage every instance held a new token within {}",
                        human(d)
                    ),
                    None => println!(
                        "  not every instance recovered from the last outage within the run"
                    ),
                }
            }
            println!(
                "  (simulated in {} of wall-clock time, seed {})",
                human(took),
                args.seed
            );
        }
    }
    Ok(())
}
