//! How a batch is counted: one pipeline of plain commands that reads the previous windows' counts
//! and adds every decision of the batch to its current window's counter at once; the decisions
//! follow from the totals, and what was added for denied requests is taken back right after.
//!
//! Plain commands instead of a script: Redis runs an INCRBY in a fraction of a microsecond but
//! spends microseconds per decision inside a Lua script. The price is that a denied request is
//! counted for one round trip before it is taken back, so a gateway deciding meanwhile sees the
//! key's budget as spent a little sooner. A budget is never exceeded: every allowed request holds
//! a count of its own, given by INCRBY's atomic total.
//!
//! No MULTI/EXEC: the invariant above needs only INCRBY's atomicity, and a transaction costs both
//! ends a reply per queued command. An expiry is set only on a counter the batch created (its total
//! is what the batch added), right after the reply, instead of a PEXPIRE per counter per batch: a
//! counter then lives without expiry for one round trip, and stays behind (never read again) only
//! if its gateway dies or loses the connection within it.

use std::collections::HashMap;

use super::batch::Question;
use crate::limit::{window, Decision};
use crate::text;

/// One counter the batch adds to: a key in a window, with how many decisions of the batch ask it.
#[derive(Debug)]
struct Counter {
    /// `gw:rl:{<tag>}:<index>`.
    current: String,
    /// The same key's counter in the window before.
    previous: String,
    window_ms: u64,
    elapsed_ms: u64,
    asked: u64,
}

/// What a batch's reply decided.
#[derive(Debug)]
pub(super) struct Outcome<'a> {
    /// In the batch's order.
    pub decisions: Vec<Decision>,
    /// What to take back from which counter (`DECRBY`) for the denied asks.
    pub take_back: Vec<(&'a str, u64)>,
    /// Counters the batch created, with the expiry (ms) to give them (`PEXPIRE`): two windows,
    /// as a counter is read as the previous count through the next window.
    pub to_expire: Vec<(&'a str, u64)>,
}

/// What a batch adds to which counters.
#[derive(Debug)]
pub(super) struct Plan {
    counters: Vec<Counter>,
    /// For each question of the batch, in order: its counter.
    counter_of: Vec<usize>,
}

/// `gw:rl:{<tag>}:<window index>`.
fn counter_key(tag: &str, index: u64) -> String {
    let mut key = String::with_capacity(tag.len() + 30);
    key.push_str("gw:rl:{");
    key.push_str(tag);
    key.push_str("}:");
    text::push_u64(&mut key, index);
    key
}

impl Plan {
    /// `now_ms` places every question in its window.
    pub(super) fn new(batch: &[Question], now_ms: u64) -> Plan {
        let mut counters: Vec<Counter> = Vec::new();
        let mut index_of: HashMap<(&str, u64), usize> = HashMap::with_capacity(batch.len());
        let counter_of = batch
            .iter()
            .map(|question| {
                let counter = *index_of.entry((question.tag.as_str(), question.window_ms)).or_insert_with(|| {
                    let (index, elapsed_ms) = window::position(now_ms, question.window_ms);
                    counters.push(Counter {
                        current: counter_key(&question.tag, index),
                        previous: counter_key(&question.tag, index.wrapping_sub(1)),
                        window_ms: question.window_ms,
                        elapsed_ms,
                        asked: 0,
                    });
                    counters.len() - 1
                });
                counters[counter].asked += 1;
                counter
            })
            .collect();
        Plan { counters, counter_of }
    }

    /// MGET of the previous counters, then per counter INCRBY its asks. The reply is the MGET's
    /// array, then one total per counter.
    pub(super) fn pipeline(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let mut previous = redis::cmd("MGET");
        for counter in &self.counters {
            previous.arg(&counter.previous);
        }
        pipe.add_command(previous);
        for counter in &self.counters {
            pipe.cmd("INCRBY").arg(&counter.current).arg(counter.asked);
        }
        pipe
    }

    /// The batch's decisions from the pipeline's reply; `None` when the reply does not fit it.
    ///
    /// A counter's asks hold the counts `total - asked + 1 ..= total` in batch order; each is
    /// allowed when its count fits the window rule (window.rs), as if it came alone.
    pub(super) fn decide(&self, batch: &[Question], reply: &[redis::Value]) -> Option<Outcome<'_>> {
        let (previous, totals) = reply.split_first()?;
        let previous: Vec<Option<u64>> = redis::from_redis_value_ref(previous).ok()?;
        if previous.len() != self.counters.len() || totals.len() != self.counters.len() {
            return None;
        }
        // Per counter: the count the next ask holds, and the asks denied so far.
        let mut next = Vec::with_capacity(self.counters.len());
        let mut to_expire = Vec::new();
        for (counter, total) in self.counters.iter().zip(totals) {
            let total: u64 = redis::from_redis_value_ref(total).ok()?;
            let before = total.saturating_sub(counter.asked);
            // 0 before: the batch created the counter (or found it emptied by a take-back, when a
            // second expiry does no harm).
            if before == 0 {
                to_expire.push((counter.current.as_str(), counter.window_ms.saturating_mul(2)));
            }
            next.push((before, 0_u64));
        }
        let decisions = batch
            .iter()
            .zip(&self.counter_of)
            .map(|(question, &c)| {
                let counter = &self.counters[c];
                let previous = previous[c].unwrap_or(0);
                let (held, denied) = &mut next[c];
                let before = *held - *denied;
                let allowed = window::allows(question.limit, counter.window_ms, counter.elapsed_ms, previous, before);
                *held += 1;
                let current = if allowed {
                    before + 1
                } else {
                    *denied += 1;
                    before
                };
                window::decide(question.limit, counter.window_ms, counter.elapsed_ms, previous, current, allowed)
            })
            .collect();
        let take_back = self
            .counters
            .iter()
            .zip(&next)
            .filter(|(_, (_, denied))| *denied > 0)
            .map(|(counter, (_, denied))| (counter.current.as_str(), *denied))
            .collect();
        Some(Outcome { decisions, take_back, to_expire })
    }
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;

    const W: u64 = 4;

    fn question(tag: &str, limit: u32) -> Question {
        Question { tag: tag.to_owned(), limit, window_ms: W }
    }

    /// The pipeline's reply: the previous counts, then each counter's total.
    fn reply(previous: &[Option<u64>], totals: &[u64]) -> Vec<Value> {
        let previous = previous.iter().map(|p| p.map_or(Value::Nil, |p| Value::BulkString(p.to_string().into())));
        std::iter::once(Value::Array(previous.collect())).chain(totals.iter().map(|&t| Value::Int(t as i64))).collect()
    }

    #[test]
    fn plan_groups_asks_by_counter_in_first_seen_order() {
        let batch = [question("a", 1), question("b", 1), question("a", 1)];
        let plan = Plan::new(&batch, 9 * W + 1);
        let counters: Vec<_> =
            plan.counters.iter().map(|c| (c.current.as_str(), c.previous.as_str(), c.asked)).collect();
        assert_eq!(counters, [("gw:rl:{a}:9", "gw:rl:{a}:8", 2), ("gw:rl:{b}:9", "gw:rl:{b}:8", 1)]);
        assert_eq!(plan.counter_of, [0, 1, 0]);
        let packed = String::from_utf8_lossy(&plan.pipeline().get_packed_pipeline()).into_owned();
        // Command names are the only all-capital lines (keys and counts are not).
        let commands: Vec<&str> = packed
            .split("\r\n")
            .filter(|line| !line.is_empty() && line.bytes().all(|b| b.is_ascii_uppercase()))
            .collect();
        assert_eq!(commands, ["MGET", "INCRBY", "INCRBY"], "{packed:?}");
    }

    #[test]
    fn decide_matches_the_window_rule_for_one_ask() {
        for limit in 1..=4 {
            for elapsed in 0..W {
                for previous in 0..=5_u64 {
                    for current in 0..=5_u64 {
                        let batch = [question("k", limit)];
                        let plan = Plan::new(&batch, 7 * W + elapsed);
                        let Outcome { decisions, take_back, .. } =
                            plan.decide(&batch, &reply(&[Some(previous)], &[current + 1])).unwrap();
                        let allowed = window::allows(limit, W, elapsed, previous, current);
                        let want = window::decide(limit, W, elapsed, previous, current + u64::from(allowed), allowed);
                        assert_eq!(
                            decisions,
                            [want],
                            "limit {limit} elapsed {elapsed} previous {previous} current {current}"
                        );
                        let want_back: &[(&str, u64)] = if allowed { &[] } else { &[("gw:rl:{k}:7", 1)] };
                        assert_eq!(take_back, want_back);
                    }
                }
            }
        }
    }

    #[test]
    fn decide_counts_asks_of_one_counter_in_order_and_takes_back_the_denied() {
        // Limit 3, one already counted elsewhere: of four asks the first two fit.
        let batch = [question("k", 3), question("other", 9), question("k", 3), question("k", 3), question("k", 3)];
        let plan = Plan::new(&batch, 0);
        let Outcome { decisions, take_back, to_expire } = plan.decide(&batch, &reply(&[None, None], &[5, 1])).unwrap();
        let allowed: Vec<(bool, u32)> = decisions.iter().map(|d| (d.allowed, d.remaining)).collect();
        assert_eq!(allowed, [(true, 1), (true, 8), (true, 0), (false, 0), (false, 0)]);
        assert_eq!(take_back, [("gw:rl:{k}:0", 2)]);
        // `other` was created by this batch (its total is its one ask), `k` was not.
        assert_eq!(to_expire, [("gw:rl:{other}:0", 2 * W)]);
    }

    #[test]
    fn decide_rejects_a_reply_that_does_not_fit() {
        let batch = [question("k", 3)];
        let plan = Plan::new(&batch, 0);
        assert!(plan.decide(&batch, &[]).is_none());
        assert!(plan.decide(&batch, &reply(&[None, None], &[1])).is_none());
        assert!(plan.decide(&batch, &reply(&[None], &[])).is_none());
        assert!(plan.decide(&batch, &[Value::Int(1), Value::Int(1)]).is_none());
    }
}
