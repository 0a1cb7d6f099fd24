//! `tokenkeeper demo`: a watcher against an in-process test authority, with
//! a live timeline of fetches, jittered refreshes, an outage served from the
//! grace period, backoff and recovery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use tokenkeeper_blocking::{HttpSettings, TokenWatcher};
use tokenkeeper_core::oauth2::{GrantType, OAuth2Client, TokenUrl};
use tokenkeeper_core::{
    BackoffPolicy, ClientId, ClientSecret, ErrorClass, Event, Jitter, Origin, TokenState,
};
use tokenkeeper_testkit::{Authority, Client, Outcome};

use crate::args::DemoArgs;
use crate::error::{CliError, describe};
use crate::time::{human, now};
use tokenkeeper_core::FetchError;

/// Lifetime of the demo's tokens.
const LIFETIME: Duration = Duration::from_secs(12);
/// Largest jitter.
const JITTER: Duration = Duration::from_secs(2);
/// Length of the injected outage: longer than a token's fresh period, shorter
/// than its life less a backoff cap, so the last token carries the watcher
/// through it on its grace period.
const OUTAGE: Duration = Duration::from_secs(9);

/// Counts of what readers found.
#[derive(Default)]
struct Reads {
    fresh: AtomicU64,
    stale: AtomicU64,
    none: AtomicU64,
    /// The same, second by second: fresh, stale, none.
    per_second: Mutex<Vec<[u64; 3]>>,
}

impl Reads {
    fn count(&self, at: Duration, kind: usize) {
        let counter = [&self.fresh, &self.stale, &self.none][kind];
        counter.fetch_add(1, Ordering::Relaxed);
        let second = at.as_secs() as usize;
        let mut per_second = self.per_second.lock().unwrap_or_else(|e| e.into_inner());
        if per_second.len() <= second {
            per_second.resize(second + 1, [0; 3]);
        }
        per_second[second][kind] += 1;
    }
}

pub(crate) fn run(args: &DemoArgs) -> Result<(), CliError> {
    #[cfg(not(feature = "plot"))]
    if args.plot.is_some() {
        return Err(crate::simulate::no_plot());
    }
    let duration = Duration::from_secs(args.duration.max(10));
    let authority = Authority::builder()
        .try_start()
        .map_err(|e| CliError::other(format!("cannot start the demo authority: {e}")))?;
    let secret = format!("demo-secret-{:016x}", fastrand_seed());
    authority
        .register_client(Client::new("demo-service", secret.as_str()).token_lifetime(LIFETIME));
    let url = TokenUrl::parse(&authority.token_url(), false)
        .map_err(|e| CliError::other(format!("bad demo URL: {e}")))?;
    let client = OAuth2Client::new(
        url,
        ClientId::new("demo-service"),
        Some(ClientSecret::new(secret)),
        GrantType::ClientCredentials,
    )
    .scope("demo.read");
    let backoff = BackoffPolicy::builder()
        .floor(Duration::from_millis(200))
        .initial(Duration::from_millis(500))
        .cap(Duration::from_secs(2))
        .build()
        .map_err(|e| CliError::other(e.to_string()))?;

    let start = Instant::now();
    let start_wall = SystemTime::now();
    // Offset of a wall-clock instant from the start of the demo.
    let since_start = move |at: SystemTime| at.duration_since(start_wall).unwrap_or_default();
    let outage_after = duration.mul_f64(0.3);
    println!(
        "tokenkeeper demo: a background watcher against a test authority at {}",
        authority.base_url()
    );
    println!(
        "  tokens live {}, go stale at half their life and are refreshed up to {} early (jitter);",
        human(LIFETIME),
        human(JITTER)
    );
    println!(
        "  after about {} the authority goes down for {}; failed refreshes back off (0.5s doubling, 2s cap)",
        human(outage_after),
        human(OUTAGE)
    );
    println!(
        "  while the last token is served from its grace period. Runs for {}.\n",
        human(duration)
    );

    let (tx, rx) = mpsc::channel::<(Duration, Event)>();
    let watcher = TokenWatcher::builder(client)
        .jitter(Jitter::up_to(JITTER))
        .backoff(backoff)
        .http(HttpSettings::default().request_timeout(Duration::from_secs(3)))
        .first_token_timeout(Duration::from_secs(10))
        .on_event(move |event| {
            let _ = tx.send((start.elapsed(), event.clone()));
        })
        .spawn()
        .map_err(|e| CliError::other(format!("cannot start the watcher: {e}")))?;

    // A reader, as an application would be: one look every 20 ms.
    let reads = Arc::new(Reads::default());
    let reader = {
        let watcher = watcher.clone();
        let reads = Arc::clone(&reads);
        let until = start + duration;
        std::thread::spawn(move || {
            while Instant::now() < until {
                let kind = match watcher.token().map(|t| t.state_at(now())) {
                    Ok(TokenState::Fresh) => 0,
                    Ok(TokenState::Stale) => 1,
                    _ => 2,
                };
                reads.count(start.elapsed(), kind);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut seen_requests = 0;
    let mut outage: Option<(Duration, Duration)> = None;
    let mut recovered_in: Option<Duration> = None;
    let mut changes = 0u32;
    let mut stale_since: Option<Duration> = None;
    // Every token the watcher took: issued, stale, expiry, from the start.
    let mut spans: Vec<[Duration; 3]> = Vec::new();
    let mut longest_stale = Duration::ZERO;
    let line = |at: Duration, text: String| println!("{:>7.2}s  {text}", at.as_secs_f64());
    while start.elapsed() < duration {
        let event = rx.recv_timeout(Duration::from_millis(25));
        // Requests as the authority saw them.
        let log = authority.requests();
        for record in log.iter().skip(seen_requests) {
            if record.status.is_none() {
                break;
            }
            seen_requests += 1;
            let at = since_start(record.at);
            let what = match &record.outcome {
                Outcome::Issued { .. } => "200, token issued".to_owned(),
                Outcome::Down => "503, the authority is down".to_owned(),
                Outcome::Rejected { error } => format!("rejected: {error}"),
                other => format!("{other:?}"),
            };
            line(
                at,
                format!(
                    "  -> authority: request #{} answered {what}",
                    record.seq + 1
                ),
            );
        }
        if let Ok((at, event)) = event {
            match event {
                Event::TokenChanged { token, origin } => {
                    changes += 1;
                    spans.push(
                        [token.issued, token.stale, token.expiry]
                            .map(|t| since_start(t.to_system_time())),
                    );
                    if let Some(since) = stale_since.take() {
                        longest_stale = longest_stale.max(at.saturating_sub(since));
                    }
                    if let Some((_, up)) = outage
                        && recovered_in.is_none()
                        && at >= up
                    {
                        recovered_in = Some(at - up);
                    }
                    let source = match origin {
                        Origin::Authority => "from the authority",
                        _ => "from the cache",
                    };
                    let status = watcher.status();
                    let plan = status
                        .next_attempt
                        .map(|next| {
                            format!(
                                "; refresh planned in {} ({} before it goes stale: jitter)",
                                human(next.duration_since(now())),
                                human(token.stale.duration_since(next))
                            )
                        })
                        .unwrap_or_default();
                    line(
                        at,
                        format!(
                            "NEW TOKEN {} {source}: fresh for {}, valid for {}{plan}",
                            token.access_token.fingerprint(),
                            human(token.stale.duration_since(token.issued)),
                            human(token.lifetime())
                        ),
                    );
                    if changes >= 2 && outage.is_none() && at >= outage_after {
                        authority.set_down(true);
                        let down = start.elapsed();
                        outage = Some((down, down + OUTAGE));
                        line(
                            down,
                            "!! OUTAGE: the authority goes down (injected)".to_owned(),
                        );
                    }
                }
                Event::FetchFailed {
                    error,
                    class,
                    consecutive_failures,
                    retry_at,
                } => {
                    let serving = match watcher.token() {
                        Ok(t) => {
                            stale_since.get_or_insert(at);
                            format!(
                                "serving the last token ({}, {} left)",
                                t.state_at(now()).as_str(),
                                human(t.expiry.duration_since(now()))
                            )
                        }
                        Err(_) => "no valid token to serve".to_owned(),
                    };
                    line(
                        at,
                        format!(
                            "refresh FAILED ({}{}), failure {consecutive_failures} in a row; backoff: retry in {}; {serving}",
                            short(&error),
                            if class == ErrorClass::Permanent {
                                ", permanent"
                            } else {
                                ""
                            },
                            human(retry_at.duration_since(now()))
                        ),
                    );
                }
                Event::TokenExpired { .. } => {
                    line(at, "!! the token expired with no replacement".to_owned());
                }
                _ => {}
            }
        }
        if let Some((_, up)) = outage
            && authority.is_down()
            && start.elapsed() >= up
        {
            authority.set_down(false);
            line(start.elapsed(), "!! the authority is back up".to_owned());
        }
    }
    watcher.shutdown();
    let _ = reader.join();
    authority.set_down(false);

    let requests = authority.requests();
    let issued = requests
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Issued { .. }))
        .count();
    let failed = requests.len() - issued;
    let fresh = reads.fresh.load(Ordering::Relaxed);
    let stale = reads.stale.load(Ordering::Relaxed);
    let none = reads.none.load(Ordering::Relaxed);
    println!("\nSummary after {}:", human(start.elapsed()));
    println!(
        "  requests to the authority: {} ({issued} issued a token, {failed} failed during the outage)",
        requests.len()
    );
    println!(
        "  reads by the application:  {} ({fresh} fresh, {stale} stale from the grace period, {none} with no token)",
        fresh + stale + none
    );
    if !longest_stale.is_zero() {
        println!(
            "  longest time on the last token while refreshes failed: {}",
            human(longest_stale)
        );
    }
    match (outage, recovered_in) {
        (Some(_), Some(r)) => println!("  recovered {} after the authority came back", human(r)),
        (Some(_), None) => println!("  the run ended before the watcher recovered from the outage"),
        (None, _) => println!("  (the run was too short for the outage)"),
    }
    #[cfg(feature = "plot")]
    if let Some(path) = &args.plot {
        let mut requests_per_second = vec![0; duration.as_secs() as usize];
        for record in &requests {
            let second = since_start(record.at).as_secs() as usize;
            if let Some(slot) = requests_per_second.get_mut(second) {
                *slot += 1;
            }
        }
        let per_second = reads.per_second.lock().unwrap_or_else(|e| e.into_inner());
        let timeline = crate::plot::Timeline {
            title: "tokenkeeper demo: one watcher against a test authority, through an outage"
                .to_owned(),
            subtitle: format!(
                "tokens live {}, refreshed up to {} before they go stale; a reader looks every 20ms: {fresh} fresh, {stale} stale, {none} with no token; {} requests ({failed} failed)",
                human(LIFETIME),
                human(JITTER),
                requests.len()
            ),
            duration,
            bucket: Duration::from_secs(1),
            requests_per_second,
            reads: per_second
                .iter()
                .map(|&[fresh, stale, nothing]| crate::plot::Reads {
                    fresh,
                    stale,
                    nothing,
                })
                .collect(),
            outages: outage
                .map(|(down, up)| (down, up.min(duration)))
                .into_iter()
                .collect(),
            clock_steps: Vec::new(),
            tokens: spans
                .iter()
                .map(|&[issued, stale, expiry]| crate::plot::Span {
                    issued,
                    stale,
                    expiry,
                })
                .collect(),
            tokens_of: "the watcher".to_owned(),
        };
        crate::plot::write(path, &timeline)?;
        println!("  timeline drawn in {}", path.display());
    }
    Ok(())
}

/// A failure in a few words.
fn short(error: &FetchError) -> String {
    match error {
        FetchError::Status { status, .. } => format!("HTTP {status}"),
        other => describe(other),
    }
}

/// A seed for the demo client's secret: the clock's nanoseconds.
fn fastrand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}
