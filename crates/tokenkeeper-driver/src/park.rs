//! A one-thread executor for the thread adapter and for blocking waits:
//! [`block_on`] polls a future on the calling thread and parks the thread
//! between polls, and [`sleep`] is a timer that needs no timer thread.
//!
//! A [`sleep`] asks the executor polling it to wake up in time: it records
//! its deadline for the current [`block_on`] call, which parks with that
//! timeout. So a `sleep` completes only when polled by [`block_on`] (on any
//! thread, nested or not); the thread adapter runs every task that way.

use std::cell::Cell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

thread_local! {
    /// The earliest deadline of the sleeps polled during the current poll of
    /// this thread's innermost `block_on`.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on the calling thread, parking it while the
/// future waits (until a waker fires, or the earliest [`sleep`] it polled is
/// due).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    // Nested calls keep the outer call's deadline intact.
    let outer = DEADLINE.with(|d| d.take());
    let output = loop {
        DEADLINE.with(|d| d.set(None));
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            break output;
        }
        match DEADLINE.with(Cell::get) {
            Some(deadline) => {
                let now = Instant::now();
                if deadline > now {
                    thread::park_timeout(deadline - now);
                }
            }
            None => thread::park(),
        }
    };
    DEADLINE.with(|d| d.set(outer));
    output
}

/// A future that completes `duration` from now, when polled by [`block_on`].
pub fn sleep(duration: Duration) -> Sleep {
    Sleep {
        // A duration too long to represent is "never" in practice: a century.
        until: Instant::now()
            .checked_add(duration)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400)),
    }
}

/// The timer of [`sleep`].
#[derive(Debug)]
pub struct Sleep {
    until: Instant,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.until {
            return Poll::Ready(());
        }
        let until = self.until;
        DEADLINE.with(|d| d.set(Some(d.get().map_or(until, |other| other.min(until)))));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::FutureExt;

    #[test]
    fn sleeps_wake_the_executor_and_the_earliest_wins() {
        let started = Instant::now();
        let which = block_on(
            async {
                sleep(Duration::from_millis(300)).await;
                "late"
            }
            .or(async {
                sleep(Duration::from_millis(30)).await;
                "early"
            }),
        );
        assert_eq!(which, "early");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(30), "{took:?}");
    }

    #[test]
    fn wakers_from_other_threads_unpark() {
        let (tx, rx) = async_channel::bounded(1);
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send_blocking(7).unwrap();
        });
        assert_eq!(block_on(rx.recv()), Ok(7));
        sender.join().unwrap();
    }

    #[test]
    fn nested_calls_keep_the_outer_deadline() {
        let started = Instant::now();
        block_on(async {
            let timer = sleep(Duration::from_millis(40));
            // An inner wait in the middle of the outer future's poll.
            block_on(sleep(Duration::from_millis(5)));
            timer.await;
        });
        assert!(started.elapsed() >= Duration::from_millis(40));
        // A duration beyond the clock's range does not panic.
        let never = sleep(Duration::MAX);
        assert!(never.until > Instant::now());
    }
}
