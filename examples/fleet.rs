//! Simulates a fleet of 1,000 instances for a day, with and without a shared
//! cache, and prints what the authority saw and what readers got.
//!
//! Run with `cargo run --release --example fleet`.

use std::time::Duration;

use tokenkeeper::engine::Jitter;
use tokenkeeper::engine::sim::{AuthorityModel, FleetConfig, FleetReport, Outage, simulate};

fn show(title: &str, r: &FleetReport) {
    println!("{title}");
    println!(
        "  authority: {} requests ({} failed), peak {} per second",
        r.authority_requests, r.authority_failures, r.peak_requests_per_second
    );
    println!(
        "  reads: {} fresh, {} stale, {} expired, {} with nothing",
        r.reads_fresh, r.reads_stale, r.reads_expired, r.reads_none
    );
    if let Some(rec) = r.recovery_after_outage {
        println!("  whole fleet on a new token {rec:?} after the outage ended");
    }
}

fn main() {
    let hour = Duration::from_secs(3600);
    let base = FleetConfig {
        instances: 1_000,
        duration: 24 * hour,
        read_interval: Duration::from_secs(30),
        authority: AuthorityModel {
            token_ttl: hour,
            ..AuthorityModel::default()
        },
        ..FleetConfig::default()
    };
    println!("1,000 instances, 24 h, 1 h tokens\n");
    show("shared cache with a lease:", &simulate(&base));
    let mut alone = base.clone();
    alone.shared_cache = false;
    alone.jitter = Jitter::fraction_of_lifetime(0.1).expect("valid fraction");
    show(
        "\nno shared cache, jitter 10% of the lifetime:",
        &simulate(&alone),
    );
    let mut outage = base.clone();
    outage.authority.outages = vec![Outage {
        start: Duration::from_secs(44 * 60),
        duration: Duration::from_secs(8 * 60),
    }];
    show(
        "\nshared cache, 8-minute outage as the token goes stale:",
        &simulate(&outage),
    );
}
