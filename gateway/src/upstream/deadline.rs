//! The deadline of a response head on one upstream connection, request after request.
//!
//! A timer made per request is registered in the timer wheel when the request first waits and
//! removed when the response comes: twice per request, about 1.7% of the gateway's instructions
//! on the plain keep-alive path. Deadlines on one connection only move on, so this timer stays
//! registered with an earlier one and, when that fires, is moved on to the current one: a busy
//! connection touches the wheel about once per timeout. It is moved earlier only for a deadline
//! that needs it (a route with a shorter timeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

#[derive(Debug, Default)]
pub(super) struct DeadlineTimer {
    /// Made the first time a request waits; reset, not remade, for later ones.
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineTimer {
    /// Called each time the request would wait: ready once `deadline` has passed.
    pub(super) fn poll_passed(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = match &mut self.timer {
            Some(timer) if timer.deadline() <= deadline => timer,
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            timer @ None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        // Fired for an earlier request's deadline: on to this one.
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Polls as a waiting request would, until its deadline passes.
    async fn wait_out(timer: &mut DeadlineTimer, deadline: Instant) {
        poll_fn(|cx| timer.poll_passed(deadline, cx)).await;
    }

    /// Whether the deadline has passed, without waiting.
    async fn passed(timer: &mut DeadlineTimer, deadline: Instant) -> bool {
        poll_fn(|cx| Poll::Ready(timer.poll_passed(deadline, cx))).await.is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn passes_at_the_deadline() {
        let mut timer = DeadlineTimer::default();
        let start = Instant::now();
        wait_out(&mut timer, start + TIMEOUT).await;
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_request_waits_for_its_own_deadline() {
        let mut timer = DeadlineTimer::default();
        assert!(!passed(&mut timer, Instant::now() + TIMEOUT).await);
        // The first request is answered halfway; the next one starts then.
        tokio::time::sleep(TIMEOUT / 2).await;
        let start = Instant::now();
        wait_out(&mut timer, start + TIMEOUT).await;
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_moves_the_timer_earlier() {
        let mut timer = DeadlineTimer::default();
        assert!(!passed(&mut timer, Instant::now() + TIMEOUT).await);
        let start = Instant::now();
        wait_out(&mut timer, start + TIMEOUT / 4).await;
        assert_eq!(start.elapsed(), TIMEOUT / 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_long_gone_is_not_mistaken_for_a_new_one() {
        let mut timer = DeadlineTimer::default();
        wait_out(&mut timer, Instant::now() + TIMEOUT).await;
        // The connection idles in the pool long after its timer fired: the next request still
        // gets its whole timeout.
        tokio::time::sleep(TIMEOUT * 3).await;
        let start = Instant::now();
        assert!(!passed(&mut timer, start + TIMEOUT).await);
        wait_out(&mut timer, start + TIMEOUT).await;
        assert_eq!(start.elapsed(), TIMEOUT);
    }
}
