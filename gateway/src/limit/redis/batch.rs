//! Decisions waiting on one worker go to Redis together: each call carries every decision that was
//! asked for while the previous call was out, so the per-call costs (a round trip, the framing and
//! system calls on both ends) are paid once per batch, not once per request. Every decision is
//! still counted in Redis before it is answered: batching delays a decision by at most one round
//! trip, and never skips Redis.
//!
//! An asker waits `timeout` at most, counted from when it asked: for the call already out, then for
//! its own. So `timeout` must be above twice the round trip, or decisions asked while a call is out
//! time out (and are decided in-process) though every call takes less than `timeout`.

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
#[derive(Clone)]
pub(super) struct Question {
    /// The key's hash tag: the counters are `gw:rl:{<tag>}:<window index>`.
    pub tag: String,
    pub limit: u32,
    pub window_ms: u64,
}

/// Who asked, waiting for the answer.
struct Asker {
    /// When the asker stops waiting (it times out by itself, see [`Batcher::decide`]).
    deadline: Instant,
    reply: oneshot::Sender<Result<Decision, Unavailable>>,
}

impl Asker {
    /// Still waiting at `now`: not past its deadline, and not gone (timed out, or the client went away).
    fn waiting(&self, now: Instant) -> bool {
        self.deadline > now && !self.reply.is_closed()
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
        let deadline = Instant::now() + timeout;
        let (reply, decision) = oneshot::channel();
        let ask = (Question { tag, limit, window_ms }, Asker { deadline, reply });
        let unsent = match self.queue.load().as_deref() {
            // Err: the task is gone with its runtime; another is started here.
            Some(queue) => queue.send(ask).err().map(|mpsc::error::SendError(returned)| returned),
            None => Some(ask),
        };
        if let Some(ask) = unsent {
            let (queue, asks) = mpsc::unbounded_channel();
            let _ = queue.send(ask);
            self.queue.store(Some(queue.into()));
            tokio::spawn(run(store.clone(), asks));
        }
        // Timed out here, not by the task: that one may be busy with a call (or with making its
        // connection) past this deadline.
        match tokio::time::timeout_at(deadline, decision).await {
            Ok(answer) => answer.unwrap_or(Err(Unavailable::NotConnected)),
            Err(_) => {
                if let Some(store) = store.upgrade() {
                    store.decision_timed_out();
                }
                Err(Unavailable::TimedOut(timeout))
            }
        }
    }
}

/// Sends what is queued as one call, answers it, and again; ends when the store (holding the
/// sending side) is dropped. Askers that stopped waiting before their call went out are left out;
/// one that stops while its call is out may still be counted (Redis is not told it was given up).
async fn run(store: Weak<RedisStore>, mut queue: mpsc::UnboundedReceiver<(Question, Asker)>) {
    let mut asks = Vec::with_capacity(MAX_BATCH);
    let mut settled = SettledCounts::default();
    while queue.recv_many(&mut asks, MAX_BATCH).await > 0 {
        let now = Instant::now();
        let (questions, askers): (Vec<Question>, Vec<Asker>) =
            asks.drain(..).filter(|(_, asker)| asker.waiting(now)).unzip();
        if questions.is_empty() {
            continue;
        }
        let Some(live) = store.upgrade() else { return };
        let decisions = live.decide_batch(&questions, &mut settled).await;
        drop(live);
        // An asker that timed out meanwhile is gone: its answer goes nowhere.
        askers.into_iter().zip(decisions).for_each(|(asker, decision)| {
            let _ = asker.reply.send(decision);
        });
    }
}
