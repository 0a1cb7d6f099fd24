//! A loopback test authority for whole-process benchmarks of the
//! `tokenkeeper` command (see `bench/bench-cli.sh`): registers the client
//! `bench` (secret `bench-secret`, one-hour tokens), prints its token URL on
//! stdout, and serves until the process is killed.

use std::io::Write;
use std::time::Duration;

use tokenkeeper_testkit::{Authority, Client};

fn main() {
    let authority = Authority::start();
    authority.register_client(
        Client::new("bench", "bench-secret").token_lifetime(Duration::from_secs(3600)),
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", authority.token_url());
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}
