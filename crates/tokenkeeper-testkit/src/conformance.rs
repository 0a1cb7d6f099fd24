//! Adapter conformance scenarios.
//!
//! Each scenario will drive one adapter (tokio, async-std, blocking) against an
//! [`Authority`](crate::Authority) and check the behaviour the design requires of all of them:
//! first token, background refresh, grace during outages, backoff and `Retry-After`,
//! permanent errors, refresh-token rotation, file-cache reuse, shutdown, bad bodies.
//!
//! This module is intentionally empty for now; the scenarios are added here.
