//! The conformance scenarios of `tokenkeeper-testkit`, run unchanged against
//! every driver: tokio, async-std, smol and plain threads, each over plain HTTP
//! and over HTTPS (a CA of the testkit's PKI, trusted from a file; the HTTPS
//! runs add RFC 8705 mutual-TLS client authentication).

mod common;

use common::{AsyncStd, Conformance, Smol, Threads, Tokio};

tokenkeeper_testkit::conformance_tests!(tokio: Conformance<Tokio>);
tokenkeeper_testkit::conformance_tests!(async_std: Conformance<AsyncStd>);
tokenkeeper_testkit::conformance_tests!(smol: Conformance<Smol>);
tokenkeeper_testkit::conformance_tests!(threads: Conformance<Threads>);

tokenkeeper_testkit::conformance_tests!(tokio_https: Conformance<Tokio>, https);
tokenkeeper_testkit::conformance_tests!(async_std_https: Conformance<AsyncStd>, https);
tokenkeeper_testkit::conformance_tests!(smol_https: Conformance<Smol>, https);
tokenkeeper_testkit::conformance_tests!(threads_https: Conformance<Threads>, https);
