//! A one-thread executor for the thread adapter and for blocking waits:
//! [`block_on`] polls a future on the calling thread and parks the thread
//! between polls, and [`sleep`] is a timer that needs no timer thread.
//!
//! A [`sleep`] asks the executor polling it to wake up in time: it records
//! its deadline for the current [`block_on`] call, which parks with that
//! timeout. So a `sleep` completes only when polled by [`block_on`] (on any
//! thread, nested or not); the thread adapter runs every task that way.
//!
//! A future that several threads poll (a watchers' driver, which a waiting
//! `spawn` drives too) may have its sleep polled by a `block_on` that then
//! returns: that deadline would be heard by no one. So a `block_on` that
//! polled sleeps on behalf of a waker other than its own wakes those wakers
//! as it returns, and whoever polls them next records the deadlines again.

use std::cell::{Cell, RefCell};
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

    /// The innermost `block_on` of this thread: its waker, and the other
    /// wakers whose sleeps it polled, with the latest of their deadlines.
    static POLLER: RefCell<Poller> = const {
        RefCell::new(Poller {
            own: None,
            foreign: Vec::new(),
        })
    };
}

struct Poller {
    own: Option<Waker>,
    foreign: Vec<(Instant, Waker)>,
}

impl Poller {
    /// Remembers that a sleep until `until` was polled with `waker`.
    fn heard(&mut self, until: Instant, waker: &Waker) {
        let Some(own) = &self.own else {
            return;
        };
        if own.will_wake(waker) {
            return;
        }
        match self.foreign.iter_mut().find(|(_, w)| w.will_wake(waker)) {
            Some((latest, _)) => *latest = (*latest).max(until),
            None => self.foreign.push((until, waker.clone())),
        }
    }
}

/// Puts the outer `block_on`'s state back (also when the future panics),
/// and wakes the wakers whose sleeps are still to come.
struct Restore {
    outer_deadline: Option<Instant>,
    outer: Option<Poller>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(self.outer_deadline));
        let Some(outer) = self.outer.take() else {
            return;
        };
        let mine = POLLER.with(|p| p.replace(outer));
        let now = Instant::now();
        for (until, waker) in mine.foreign {
            if until > now {
                waker.wake();
            }
        }
    }
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
    // Nested calls keep the outer call's state intact.
    let _restore = Restore {
        outer_deadline: DEADLINE.with(Cell::take),
        outer: Some(POLLER.with(|p| {
            p.replace(Poller {
                own: Some(waker.clone()),
                foreign: Vec::new(),
            })
        })),
    };
    loop {
        DEADLINE.with(|d| d.set(None));
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        let now = Instant::now();
        // Sleeps that are due were heard (polled again, or dropped).
        POLLER.with(|p| p.borrow_mut().foreign.retain(|(until, _)| *until > now));
        match DEADLINE.with(Cell::get) {
            Some(deadline) => {
                if deadline > now {
                    thread::park_timeout(deadline - now);
                }
            }
            None => thread::park(),
        }
    }
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.until {
            return Poll::Ready(());
        }
        let until = self.until;
        DEADLINE.with(|d| d.set(Some(d.get().map_or(until, |other| other.min(until)))));
        POLLER.with(|p| p.borrow_mut().heard(until, cx.waker()));
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

    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn sleeps_polled_for_another_waker_are_handed_back() {
        let (later_woken, due_woken) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let (later_waker, due_waker) = (
            Waker::from(Arc::clone(&later_woken)),
            Waker::from(Arc::clone(&due_woken)),
        );
        let mut later = Box::pin(sleep(Duration::from_secs(60)));
        let mut due = Box::pin(sleep(Duration::from_millis(1)));
        let mut own_sleep = Box::pin(sleep(Duration::from_secs(60)));
        let mut polls = 0;
        block_on(std::future::poll_fn(|cx| {
            polls += 1;
            // The first poll polls two sleeps as a future shared between
            // threads does, on behalf of other wakers, and one with this
            // executor's waker; the last poll polls none of them.
            if polls == 1 {
                assert!(
                    later
                        .as_mut()
                        .poll(&mut Context::from_waker(&later_waker))
                        .is_pending()
                );
                assert!(
                    due.as_mut()
                        .poll(&mut Context::from_waker(&due_waker))
                        .is_pending()
                );
                assert!(own_sleep.as_mut().poll(cx).is_pending());
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            thread::sleep(Duration::from_millis(5));
            Poll::Ready(())
        }));
        // The sleep still to come is handed back, once, to whoever polls
        // next; the one now due is not (its owner hears of it anyway).
        assert_eq!(later_woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(due_woken.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Outside any `block_on`, nothing is recorded.
        let outside = Arc::new(Count::default());
        let outside_waker = Waker::from(Arc::clone(&outside));
        assert!(
            later
                .as_mut()
                .poll(&mut Context::from_waker(&outside_waker))
                .is_pending()
        );
        POLLER.with(|p| assert!(p.borrow().foreign.is_empty()));
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
