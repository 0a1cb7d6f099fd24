//! tokenkeeper keeps OAuth2 access tokens fresh in the background.
//!
//! This facade re-exports the runtime-agnostic engine [`core`] (the crate
//! `tokenkeeper-core`); runtime adapters are enabled with cargo features as
//! they become available.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use tokenkeeper_core as core;
