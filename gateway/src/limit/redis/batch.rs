//! Decisions waiting on one worker go to Redis together: each call carries every decision that was
//! asked for while the previous call was out, so the per-call costs (a round trip, the framing and
//! system calls on both ends) are paid once per batch, not once per request. Every decision is
//! still counted in Redis before it is answered: batching delays a decision by at most one round
//! trip, and never skips Redis.

use std::sync::Weak;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::count::SettledCounts;
use super::{RedisStore, Unavailable};
use crate::limit::Decision;

/// Decisions per call at most. A larger queue is split over the following calls. With one call out
/// per worker, a worker decides at most `MAX_BATCH` per round trip (51,200/s at a 10 ms round
/// trip); and one call holds Redis's single thread for about 1 ms at this size (measured 2.3 ms for
/// 1,024 keys, all new).
const MAX_BATCH: usize = 512;

/// One decision to make.
pub(super) struct Question {
    /// The key's hash tag: the counters are `gw:rl:{<tag>}:<window index>`.
    pub tag: String,
    pub limit: u32,
    pub window_ms: u64,
}

/// Who asked, waiting for the answer.
struct Asker {
    /// When the asker stops waiting: answered `TimedOut` then, whether or not its call is out.
    deadline: Instant,
    /// Taken when answered.
    reply: Option<oneshot::Sender<Result<Decision, Unavailable>>>,
}

impl Asker {
    fn answer(&mut self, decision: Result<Decision, Unavailable>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(decision);
        }
    }

    /// Answers `TimedOut` if the deadline has come by `now`.
    fn expire(&mut self, now: Instant, timeout: Duration) {
        if self.deadline <= now {
            self.answer(Err(Unavailable::TimedOut(timeout)));
        }
    }

    /// Answered already, or gone (the client went away).
    fn settled(&self) -> bool {
        self.reply.as_ref().is_none_or(oneshot::Sender::is_closed)
    }
}

/// A worker's queue into its batching task. The task runs on the runtime of the first decision
/// asked for on the worker (a worker's own runtime, in the gateway), and is started again if that
/// runtime has gone.
#[derive(Default)]
pub(super) struct Batcher {
    queue: ArcSwapOption<mpsc::UnboundedSender<(Question, Asker)>>,
}

impl Batcher {
    /// Queues one decision and waits for it, until `timeout` from now at most; `store` is the one
    /// that owns this batcher.
    pub(super) async fn decide(
        &self,
        store: &Weak<RedisStore>,
        tag: String,
        limit: u32,
        window_ms: u64,
        timeout: Duration,
    ) -> Result<Decision, Unavailable> {
        let (reply, decision) = oneshot::channel();
        let asker = Asker { deadline: Instant::now() + timeout, reply: Some(reply) };
        let mut ask = (Question { tag, limit, window_ms }, asker);
        if let Some(queue) = self.queue.load().as_deref() {
            match queue.send(ask) {
                Ok(()) => return decision.await.unwrap_or(Err(Unavailable::NotConnected)),
                // The task is gone with its runtime: start another here.
                Err(mpsc::error::SendError(returned)) => ask = returned,
            }
        }
        let (queue, asks) = mpsc::unbounded_channel();
        let _ = queue.send(ask);
        self.queue.store(Some(queue.into()));
        tokio::spawn(run(store.clone(), asks, timeout));
        // Dropped unanswered only when the store is.
        decision.await.unwrap_or(Err(Unavailable::NotConnected))
    }
}

/// Sends what is queued as one call, answers it, and again; ends when the store (holding the
/// sending side) is dropped. Askers are answered `TimedOut` at their deadline, even while their
/// call is still out (it goes on, and may count them: Redis is not told they were given up).
async fn run(store: Weak<RedisStore>, mut queue: mpsc::UnboundedReceiver<(Question, Asker)>, timeout: Duration) {
    let mut asks = Vec::with_capacity(MAX_BATCH);
    let mut settled = SettledCounts::default();
    while queue.recv_many(&mut asks, MAX_BATCH).await > 0 {
        let now = Instant::now();
        let (questions, mut askers): (Vec<Question>, Vec<Asker>) = asks
            .drain(..)
            .filter_map(|(question, mut asker)| {
                asker.expire(now, timeout);
                // Given up on while queued: not counted.
                (!asker.settled()).then_some((question, asker))
            })
            .unzip();
        if questions.is_empty() {
            continue;
        }
        let Some(live) = store.upgrade() else { return };
        let call = live.decide_batch(&questions, &mut settled);
        tokio::pin!(call);
        let decisions = loop {
            // Askers are queued in order, so the first one waiting has the earliest deadline.
            let next_deadline = askers.iter().find(|asker| !asker.settled()).map(|asker| asker.deadline);
            tokio::select! {
                decisions = &mut call => break decisions,
                () = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {
                    let now = Instant::now();
                    askers.iter_mut().for_each(|asker| asker.expire(now, timeout));
                }
            }
        };
        match decisions {
            Ok(decisions) => askers.iter_mut().zip(decisions).for_each(|(asker, decision)| asker.answer(Ok(decision))),
            Err(error) => askers.iter_mut().for_each(|asker| asker.answer(Err(error.clone()))),
        }
    }
}
