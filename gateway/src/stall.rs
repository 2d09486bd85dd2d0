//! A deadline on waiting without progress: for a response body the upstream stops sending, or a
//! response the client stops reading.
//!
//! The timer is armed only when an operation would wait, and keeps running across polls of the
//! same wait; progress disarms it. Data that is ready whenever asked for never touches the timer
//! wheel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub(crate) struct StallTimer {
    limit: Duration,
    /// Made the first time something waits; reset, not remade, for later waits.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer runs for the current wait: polls while waiting must not extend it.
    armed: bool,
}

impl StallTimer {
    pub(crate) fn new(limit: Duration) -> StallTimer {
        StallTimer { limit, timer: None, armed: false }
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// Progress was made: the next wait counts from its own start.
    pub(crate) fn progressed(&mut self) {
        self.armed = false;
    }

    /// Called each time the operation would wait: ready once it has waited `limit` without
    /// progress.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timer = match (&mut self.timer, self.armed) {
            (Some(timer), true) => timer,
            (Some(timer), false) => {
                timer.as_mut().reset(Instant::now() + self.limit);
                timer
            }
            (timer @ None, _) => timer.insert(Box::pin(tokio::time::sleep(self.limit))),
        };
        self.armed = true;
        timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Polls as a waiting operation would, until the timer runs out.
    async fn wait_out(stall: &mut StallTimer) {
        poll_fn(|cx| stall.poll_expired(cx)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn runs_out_after_limit_of_one_wait() {
        let mut stall = StallTimer::new(LIMIT);
        let start = Instant::now();
        wait_out(&mut stall).await;
        assert_eq!(start.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn polls_within_one_wait_do_not_extend_it() {
        let mut stall = StallTimer::new(LIMIT);
        let start = Instant::now();
        assert!(poll_fn(|cx| Poll::Ready(stall.poll_expired(cx))).await.is_pending());
        tokio::time::sleep(LIMIT / 2).await;
        wait_out(&mut stall).await;
        assert_eq!(start.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_starts_the_next_wait_afresh() {
        let mut stall = StallTimer::new(LIMIT);
        assert!(poll_fn(|cx| Poll::Ready(stall.poll_expired(cx))).await.is_pending());
        tokio::time::sleep(LIMIT / 2).await;
        stall.progressed();
        let start = Instant::now();
        wait_out(&mut stall).await;
        assert_eq!(start.elapsed(), LIMIT);
    }
}
