//! The conformance scenarios of `tokenkeeper-testkit`, run unchanged against
//! every driver: tokio, async-std, smol and plain threads.

mod common;

use common::{AsyncStd, Conformance, Smol, Threads, Tokio};

tokenkeeper_testkit::conformance_tests!(tokio: Conformance<Tokio>);
tokenkeeper_testkit::conformance_tests!(async_std: Conformance<AsyncStd>);
tokenkeeper_testkit::conformance_tests!(smol: Conformance<Smol>);
tokenkeeper_testkit::conformance_tests!(threads: Conformance<Threads>);
