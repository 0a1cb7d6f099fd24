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

/// The error for `--plot` in a build without the `plot` feature.
#[cfg(not(feature = "plot"))]
pub(crate) fn no_plot() -> CliError {
    CliError::usage(
        "this tokenkeeper was built without the `plot` feature: --plot is not available",
    )
}

/// What the simulation of `config` did, ready to draw.
#[cfg(feature = "plot")]
pub(crate) fn timeline(
    config: &FleetConfig,
    report: &tokenkeeper_core::sim::FleetReport,
) -> crate::plot::Timeline {
    use crate::plot::{Reads, Span, Timeline};
    let ttl = config.authority.token_ttl;
    let sharing = if config.shared_cache {
        "a shared cache"
    } else {
        "no shared cache"
    };
    let words = crate::plot::seconds_in_words;
    let jitter = config.jitter.max_for(ttl);
    let t = &report.timeline;
    Timeline {
        title: format!(
            "tokenkeeper simulate: {} instance{}, {}, {} tokens, {sharing}",
            config.instances,
            if config.instances == 1 { "" } else { "s" },
            words(config.duration),
            words(ttl),
        ),
        subtitle: format!(
            "jitter up to {}, reads every {}, seed {}: {} requests ({} failed), peak {}/s; reads: {} fresh, {} stale, {} nothing",
            words(jitter),
            words(config.read_interval),
            config.seed,
            report.authority_requests,
            report.authority_failures,
            report.peak_requests_per_second,
            report.reads_fresh,
            report.reads_stale,
            report.reads_expired + report.reads_none,
        ),
        duration: config.duration,
        bucket: t.bucket,
        requests_per_second: t
            .buckets
            .iter()
            .map(|b| b.peak_requests_per_second)
            .collect(),
        reads: t
            .buckets
            .iter()
            .map(|b| Reads {
                fresh: b.reads_fresh,
                stale: b.reads_stale,
                nothing: b.reads_expired + b.reads_none,
            })
            .collect(),
        outages: config
            .authority
            .outages
            .iter()
            .map(|o| (o.start, o.start + o.duration))
            .collect(),
        clock_steps: config.clock_steps.iter().map(|s| s.at).collect(),
        tokens: t
            .sample_tokens
            .iter()
            .map(|s| Span {
                issued: s.issued,
                stale: s.stale,
                expiry: s.expiry,
            })
            .collect(),
        tokens_of: "the first instance".to_owned(),
    }
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
    #[cfg(not(feature = "plot"))]
    if args.plot.is_some() {
        return Err(no_plot());
    }
    let started = Instant::now();
    let report = simulate(&config);
    let took = started.elapsed();
    #[cfg(feature = "plot")]
    if let Some(path) = &args.plot {
        crate::plot::write(path, &timeline(&config, &report))?;
    }
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
            if let Some(path) = &args.plot {
                println!("  timeline drawn in {}", path.display());
            }
        }
    }
    Ok(())
}

/// The pictures of `docs/pictures/`: the fleet scenarios of the core's
/// simulation tests (`crates/tokenkeeper-core/tests/fleet.rs`), drawn from
/// the same seeded runs, checked for what they must show, and compared with
/// the committed files. `TOKENKEEPER_BLESS=1` rewrites the files instead.
#[cfg(all(test, feature = "plot"))]
mod pictures {
    use std::path::PathBuf;
    use std::time::Duration;

    use tokenkeeper_core::Jitter;
    use tokenkeeper_core::sim::{AuthorityModel, ClockStep, FleetConfig, Outage, simulate};

    use super::timeline;
    use crate::plot::{render, tests::texts};

    const HOUR: Duration = Duration::from_secs(3600);

    /// As `day_of_hour_tokens` of the core's tests/fleet.rs.
    fn day_of_hour_tokens(instances: usize, shared_cache: bool) -> FleetConfig {
        FleetConfig {
            instances,
            duration: 24 * HOUR,
            shared_cache,
            read_interval: Duration::from_secs(30),
            authority: AuthorityModel {
                token_ttl: HOUR,
                ..AuthorityModel::default()
            },
            seed: 2026,
            ..FleetConfig::default()
        }
    }

    fn scenarios() -> Vec<(&'static str, FleetConfig)> {
        let shared = day_of_hour_tokens(1_000, true);
        let mut jittered = day_of_hour_tokens(1_000, false);
        jittered.jitter = Jitter::fraction_of_lifetime(0.1).unwrap();
        let mut lockstep = jittered.clone();
        lockstep.jitter = Jitter::none();
        let mut outage = day_of_hour_tokens(1_000, true);
        outage.duration = 3 * HOUR;
        outage.authority.outages = vec![Outage {
            start: Duration::from_secs(44 * 60),
            duration: Duration::from_secs(8 * 60),
        }];
        let day = 24 * 3600 * 1000_i64;
        let steps = FleetConfig {
            clock_steps: vec![
                ClockStep {
                    at: 6 * HOUR,
                    offset_ms: -day,
                },
                ClockStep {
                    at: 12 * HOUR,
                    offset_ms: 10 * 365 * day,
                },
                ClockStep {
                    at: 13 * HOUR,
                    offset_ms: 0,
                },
            ],
            ..day_of_hour_tokens(200, true)
        };
        vec![
            ("fleet-shared-cache", shared),
            ("fleet-unshared-jitter", jittered),
            ("fleet-unshared-lockstep", lockstep),
            ("fleet-outage", outage),
            ("fleet-clock-steps", steps),
        ]
    }

    fn folder() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/pictures")
    }

    #[test]
    fn docs_pictures_show_the_fleet_scenarios() {
        let bless = std::env::var_os("TOKENKEEPER_BLESS").is_some_and(|v| v == "1");
        let mut stale = Vec::new();
        for (name, config) in scenarios() {
            let report = simulate(&config);
            let drawn = timeline(&config, &report);
            let svg = render(&drawn).expect("the picture draws");
            let texts = texts(&svg);
            let has = |text: &str| texts.iter().any(|t| t == text);
            for label in [
                "requests / s",
                "% of reads",
                "time since the start (h)",
                "reads served a fresh token",
                "a stale one (grace period)",
                "nothing usable",
                "then stale, until expiry",
            ] {
                assert!(has(label), "{name}: {label:?} missing from {texts:?}");
            }
            assert!(has(&drawn.title), "{name}");
            // The series are there, bucket by bucket, from the run itself.
            assert_eq!(
                drawn.requests_per_second.len(),
                report.timeline.buckets.len()
            );
            assert_eq!(
                drawn.requests_per_second.iter().max().copied(),
                Some(report.peak_requests_per_second),
                "{name}"
            );
            assert!(drawn.tokens.len() >= 3, "{name}: {:?}", drawn.tokens);
            assert_eq!(
                svg.matches("opacity=\"0.18\" fill=\"#D62728\"").count(),
                3 * config.authority.outages.len(),
                "{name}: an outage shaded on each panel"
            );
            assert_eq!(
                svg.matches("stroke=\"#9467BD\"").count(),
                3 * config.clock_steps.len(),
                "{name}: a clock step marked on each panel"
            );
            // The peak shows on the requests axis: 1,000 instances refreshing
            // in lockstep, far fewer with jitter or a shared cache.
            let peak = report.peak_requests_per_second;
            match name {
                "fleet-unshared-lockstep" => assert!(peak >= 900, "{peak}"),
                "fleet-shared-cache" | "fleet-outage" | "fleet-clock-steps" => {
                    assert!(peak <= 5, "{name}: {peak}")
                }
                _ => {}
            }
            let path = folder().join(format!("{name}.svg"));
            if bless {
                std::fs::create_dir_all(folder()).unwrap();
                std::fs::write(&path, &svg).unwrap();
            } else if !folder().exists() {
                println!("no docs/pictures folder here (a packaged crate?): nothing to compare");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(svg.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "these pictures differ from what the simulation draws now: {stale:?}; \
             run `TOKENKEEPER_BLESS=1 cargo test -p tokenkeeper-cli docs_pictures` and look at them"
        );
    }
}
