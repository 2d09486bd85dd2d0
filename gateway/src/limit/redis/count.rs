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
//! counter then lives without expiry for one round trip. When a call fails or times out (its
//! INCRBYs may still have been applied) or the PEXPIREs after it fail, the counters it touched go
//! into [`OwedExpiries`], which are set once Redis answers again: a counter stays behind without
//! expiry only if its gateway dies first, or the list is full (see [`MAX_OWED`]).
//!
//! A previous window's count is read once per key and worker after it has settled (see
//! [`SettledCounts`]), not in every batch: with per-user keys, the reads would otherwise double the
//! commands Redis runs per request.

use std::collections::HashMap;

use super::batch::Question;
use crate::limit::{window, Decision};
use crate::text;

/// How long after its window ended a counter is taken to have settled: every count for it has
/// reached Redis. Far above a round trip and the clock offsets NTP keeps; a count that arrives
/// later (from a gateway whose clock runs more than this behind) is missed by gateways that
/// remembered the counter already. Windows of a second or less are always read.
const SETTLE_MS: u64 = 1_000;

/// Keys a worker remembers settled counts of. Past it the memory starts over (each key is read
/// again once); at about 100 bytes per key this caps it near 6.5 MiB per worker.
const MAX_SETTLED: usize = 65_536;

/// Counters owed an expiry, at most this many. Past it more are not remembered (and counted, see
/// [`OwedExpiries::forgotten`]): those may stay in Redis without expiry. A failed call owes one per
/// key it carried, and calls stop while Redis is unreachable, so only a long run of failed calls
/// with many distinct keys fills it; at about 100 bytes per counter this caps it near 6.5 MiB.
pub(super) const MAX_OWED: usize = 65_536;

/// Counters whose expiry may be missing, by name, with the expiry (ms) to give them.
#[derive(Debug, Default)]
pub(super) struct OwedExpiries {
    by_counter: HashMap<String, u64>,
    /// Counters not remembered because the list was full.
    forgotten: u64,
}

impl OwedExpiries {
    /// Remembers `counter` (again: a counter owed twice gets the longer expiry); false when full.
    pub(super) fn owe(&mut self, counter: &str, expiry_ms: u64) -> bool {
        if let Some(owed) = self.by_counter.get_mut(counter) {
            *owed = (*owed).max(expiry_ms);
            return true;
        }
        if self.by_counter.len() >= MAX_OWED {
            self.forgotten += 1;
            return false;
        }
        self.by_counter.insert(counter.to_owned(), expiry_ms);
        true
    }

    /// Up to `most` of the owed expiries, no longer owed: owe them again if setting them fails.
    pub(super) fn take(&mut self, most: usize) -> Vec<(String, u64)> {
        let taken: Vec<String> = self.by_counter.keys().take(most).cloned().collect();
        taken.into_iter().filter_map(|counter| self.by_counter.remove_entry(&counter)).collect()
    }

    /// How many counters were not remembered because the list was full.
    pub(super) fn forgotten(&self) -> u64 {
        self.forgotten
    }
}

/// A worker's settled previous-window counts, by hash tag: a settled counter no longer changes,
/// so the batches of the rest of the window need not read it again.
#[derive(Debug, Default)]
pub(super) struct SettledCounts {
    by_tag: HashMap<String, Settled>,
}

#[derive(Debug, Clone, Copy)]
struct Settled {
    window_ms: u64,
    /// The window the count is of.
    index: u64,
    count: u64,
}

impl SettledCounts {
    fn get(&self, tag: &str, window_ms: u64, index: u64) -> Option<u64> {
        let settled = self.by_tag.get(tag)?;
        (settled.window_ms == window_ms && settled.index == index).then_some(settled.count)
    }

    /// Replaces what `tag` held: one window per key is enough, as only the latest is asked for.
    fn remember(&mut self, tag: &str, settled: Settled) {
        if let Some(held) = self.by_tag.get_mut(tag) {
            *held = settled;
            return;
        }
        if self.by_tag.len() >= MAX_SETTLED {
            self.by_tag.clear();
        }
        self.by_tag.insert(tag.to_owned(), settled);
    }
}

/// One counter the batch adds to: a key in a window, with how many decisions of the batch ask it.
#[derive(Debug)]
struct Counter {
    /// `gw:rl:{<tag>}:<index>`.
    current: String,
    previous_index: u64,
    previous: Previous,
    window_ms: u64,
    elapsed_ms: u64,
    asked: u64,
    /// The batch's first question for it (where its tag is).
    first: usize,
}

/// The same key's counter in the window before.
#[derive(Debug)]
enum Previous {
    /// Read in this batch: `gw:rl:{<tag>}:<previous_index>`.
    Read(String),
    /// Settled, and remembered from an earlier batch.
    Known(u64),
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
    /// `now_ms` places every question in its window; previous counts found in `settled` are not
    /// read again.
    pub(super) fn new(batch: &[Question], now_ms: u64, settled: &SettledCounts) -> Plan {
        let mut counters: Vec<Counter> = Vec::new();
        let mut index_of: HashMap<(&str, u64), usize> = HashMap::with_capacity(batch.len());
        let counter_of = batch
            .iter()
            .enumerate()
            .map(|(first, question)| {
                let counter = *index_of.entry((question.tag.as_str(), question.window_ms)).or_insert_with(|| {
                    let (index, elapsed_ms) = window::position(now_ms, question.window_ms);
                    let previous_index = index.wrapping_sub(1);
                    let previous = match settled.get(&question.tag, question.window_ms, previous_index) {
                        Some(count) => Previous::Known(count),
                        None => Previous::Read(counter_key(&question.tag, previous_index)),
                    };
                    counters.push(Counter {
                        current: counter_key(&question.tag, index),
                        previous_index,
                        previous,
                        window_ms: question.window_ms,
                        elapsed_ms,
                        asked: 0,
                        first,
                    });
                    counters.len() - 1
                });
                counters[counter].asked += 1;
                counter
            })
            .collect();
        Plan { counters, counter_of }
    }

    /// Every counter the batch adds to, with the expiry (ms) it gets when created: what a failed
    /// call may have left without one.
    pub(super) fn counters(&self) -> impl Iterator<Item = (&str, u64)> {
        self.counters.iter().map(|counter| (counter.current.as_str(), counter.window_ms.saturating_mul(2)))
    }

    /// The previous counters to read, in the counters' order.
    fn reads(&self) -> impl Iterator<Item = &str> {
        self.counters.iter().filter_map(|counter| match &counter.previous {
            Previous::Read(key) => Some(key.as_str()),
            Previous::Known(_) => None,
        })
    }

    /// MGET of the previous counters to read (none when all are known), then per counter INCRBY
    /// its asks. The reply is the MGET's array, if sent, then one total per counter.
    pub(super) fn pipeline(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        let mut reads = self.reads().peekable();
        if reads.peek().is_some() {
            let mut previous = redis::cmd("MGET");
            for key in reads {
                previous.arg(key);
            }
            pipe.add_command(previous);
        }
        for counter in &self.counters {
            pipe.cmd("INCRBY").arg(&counter.current).arg(counter.asked);
        }
        pipe
    }

    /// The batch's decisions from the pipeline's reply; `None` when the reply does not fit it.
    ///
    /// A counter's asks hold the counts `total - asked + 1 ..= total` in batch order; each is
    /// allowed when its count fits the window rule (window.rs), as if it came alone.
    /// The previous counts it read and that had settled are remembered in `settled`.
    pub(super) fn decide(
        &self,
        batch: &[Question],
        reply: &[redis::Value],
        settled: &mut SettledCounts,
    ) -> Option<Outcome<'_>> {
        let reads = self.reads().count();
        let (read, totals): (Vec<Option<u64>>, _) = match reply.split_first() {
            Some((read, totals)) if reads > 0 => (redis::from_redis_value_ref(read).ok()?, totals),
            _ => (Vec::new(), reply),
        };
        if read.len() != reads || totals.len() != self.counters.len() {
            return None;
        }
        let mut read = read.into_iter();
        let previous: Vec<u64> = self
            .counters
            .iter()
            .map(|counter| match counter.previous {
                Previous::Known(count) => count,
                Previous::Read(_) => read.next().flatten().unwrap_or(0),
            })
            .collect();
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
        for (counter, &count) in self.counters.iter().zip(&previous) {
            if matches!(counter.previous, Previous::Read(_)) && counter.elapsed_ms >= SETTLE_MS {
                let (window_ms, index) = (counter.window_ms, counter.previous_index);
                settled.remember(&batch[counter.first].tag, Settled { window_ms, index, count });
            }
        }
        let decisions = batch
            .iter()
            .zip(&self.counter_of)
            .map(|(question, &c)| {
                let counter = &self.counters[c];
                let previous = previous[c];
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
        let plan = Plan::new(&batch, 9 * W + 1, &SettledCounts::default());
        let counters: Vec<_> = plan.counters.iter().map(|c| (c.current.as_str(), c.asked)).collect();
        assert_eq!(counters, [("gw:rl:{a}:9", 2), ("gw:rl:{b}:9", 1)]);
        assert_eq!(reads(&plan), ["gw:rl:{a}:8", "gw:rl:{b}:8"]);
        assert_eq!(plan.counter_of, [0, 1, 0]);
        assert_eq!(commands(&plan), ["MGET", "INCRBY", "INCRBY"]);
    }

    /// The pipeline's command names: the only all-capital lines (keys and counts are not).
    fn commands(plan: &Plan) -> Vec<String> {
        let packed = String::from_utf8_lossy(&plan.pipeline().get_packed_pipeline()).into_owned();
        packed
            .split("\r\n")
            .filter(|line| !line.is_empty() && line.bytes().all(|b| b.is_ascii_uppercase()))
            .map(str::to_owned)
            .collect()
    }

    /// The keys the pipeline reads.
    fn reads(plan: &Plan) -> Vec<&str> {
        plan.reads().collect()
    }

    /// A window long enough to settle in: the tests above use 4 ms ones, which never do.
    const LONG: u64 = 60_000;

    fn long(tag: &str) -> Question {
        Question { tag: tag.to_owned(), limit: 100, window_ms: LONG }
    }

    #[test]
    fn decide_remembers_previous_counts_read_once_they_have_settled() {
        let mut settled = SettledCounts::default();
        let batch = [long("a")];
        // Too soon after the window began: read, and not remembered.
        let soon = 5 * LONG + SETTLE_MS - 1;
        let plan = Plan::new(&batch, soon, &settled);
        assert_eq!(reads(&plan), ["gw:rl:{a}:4"]);
        plan.decide(&batch, &reply(&[Some(30)], &[1]), &mut settled).unwrap();
        let plan = Plan::new(&batch, soon, &settled);
        assert_eq!(reads(&plan), ["gw:rl:{a}:4"]);

        // Settled: read once more, then remembered for the rest of the window.
        let later = 5 * LONG + SETTLE_MS;
        let plan = Plan::new(&batch, later, &settled);
        assert_eq!(reads(&plan), ["gw:rl:{a}:4"]);
        plan.decide(&batch, &reply(&[Some(30)], &[2]), &mut settled).unwrap();
        let plan = Plan::new(&batch, later, &settled);
        assert_eq!(reads(&plan), Vec::<&str>::new());
        assert_eq!(commands(&plan), ["INCRBY"]);
        // Decided as if read: 100 - 30 × 59/60 - 3 leaves 67.5, reported as 67.
        let Outcome { decisions, .. } = plan.decide(&batch, &[Value::Int(3)], &mut settled).unwrap();
        assert_eq!(decisions[0].remaining, 67);
        assert_eq!(reads(&Plan::new(&batch, 6 * LONG - 1, &settled)), Vec::<&str>::new());

        // The next window reads its own previous count; so does another window length.
        assert_eq!(reads(&Plan::new(&batch, 6 * LONG + SETTLE_MS, &settled)), ["gw:rl:{a}:5"]);
        let other = [Question { window_ms: 2 * LONG, ..long("a") }];
        assert_eq!(reads(&Plan::new(&other, 5 * LONG + SETTLE_MS, &settled)), ["gw:rl:{a}:1"]);
    }

    #[test]
    fn a_batch_reads_only_the_previous_counts_it_does_not_know() {
        let mut settled = SettledCounts::default();
        let now = 5 * LONG + SETTLE_MS;
        let first = [long("a")];
        Plan::new(&first, now, &settled).decide(&first, &reply(&[Some(7)], &[1]), &mut settled).unwrap();

        let batch = [long("b"), long("a"), long("c")];
        let plan = Plan::new(&batch, now, &settled);
        assert_eq!(reads(&plan), ["gw:rl:{b}:4", "gw:rl:{c}:4"]);
        assert_eq!(commands(&plan), ["MGET", "INCRBY", "INCRBY", "INCRBY"]);
        let Outcome { decisions, .. } =
            plan.decide(&batch, &reply(&[Some(50), None], &[1, 2, 1]), &mut settled).unwrap();
        // 100 - 50 × 59/60 - 1, 100 - 7 × 59/60 - 2 (the remembered 7), 100 - 1; rounded down.
        let remaining: Vec<u32> = decisions.iter().map(|d| d.remaining).collect();
        assert_eq!(remaining, [49, 91, 99]);
        // A reply shaped for the reads it no longer needs does not fit.
        assert!(plan.decide(&batch, &reply(&[Some(50), None, Some(7)], &[1, 2, 1]), &mut settled).is_none());
        // All three are known now.
        assert_eq!(commands(&Plan::new(&batch, now, &settled)), ["INCRBY", "INCRBY", "INCRBY"]);
    }

    #[test]
    fn settled_counts_start_over_when_full() {
        let mut settled = SettledCounts::default();
        let count = |index| Settled { window_ms: LONG, index, count: 1 };
        for i in 0..MAX_SETTLED {
            settled.remember(&i.to_string(), count(1));
        }
        // A key held already is replaced in place.
        settled.remember("0", count(2));
        assert_eq!((settled.by_tag.len(), settled.get("0", LONG, 2)), (MAX_SETTLED, Some(1)));
        settled.remember("new", count(1));
        assert_eq!(settled.by_tag.len(), 1);
        assert_eq!(settled.get("new", LONG, 1), Some(1));
    }

    #[test]
    fn owed_expiries_keep_the_longest_and_forget_past_the_cap() {
        let mut owed = OwedExpiries::default();
        assert!(owed.owe("a", 10) && owed.owe("a", 30) && owed.owe("a", 20));
        assert_eq!(owed.take(5), [("a".to_owned(), 30)]);
        assert!(owed.take(5).is_empty(), "taken means no longer owed");
        for i in 0..MAX_OWED {
            assert!(owed.owe(&i.to_string(), 1));
        }
        // Full: a new counter is forgotten (and counted), one owed already is still remembered.
        assert!(!owed.owe("new", 1));
        assert!(owed.owe("0", 2));
        assert_eq!(owed.forgotten(), 1);
        assert_eq!(owed.take(10).len(), 10);
        assert!(owed.owe("new", 1), "room again");
    }

    #[test]
    fn decide_matches_the_window_rule_for_one_ask() {
        for limit in 1..=4 {
            for elapsed in 0..W {
                for previous in 0..=5_u64 {
                    for current in 0..=5_u64 {
                        let batch = [question("k", limit)];
                        let plan = Plan::new(&batch, 7 * W + elapsed, &SettledCounts::default());
                        let Outcome { decisions, take_back, .. } = plan
                            .decide(&batch, &reply(&[Some(previous)], &[current + 1]), &mut SettledCounts::default())
                            .unwrap();
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
        let plan = Plan::new(&batch, 0, &SettledCounts::default());
        let Outcome { decisions, take_back, to_expire } =
            plan.decide(&batch, &reply(&[None, None], &[5, 1]), &mut SettledCounts::default()).unwrap();
        let allowed: Vec<(bool, u32)> = decisions.iter().map(|d| (d.allowed, d.remaining)).collect();
        assert_eq!(allowed, [(true, 1), (true, 8), (true, 0), (false, 0), (false, 0)]);
        assert_eq!(take_back, [("gw:rl:{k}:0", 2)]);
        // `other` was created by this batch (its total is its one ask), `k` was not.
        assert_eq!(to_expire, [("gw:rl:{other}:0", 2 * W)]);
    }

    #[test]
    fn decide_rejects_a_reply_that_does_not_fit() {
        let batch = [question("k", 3)];
        let plan = Plan::new(&batch, 0, &SettledCounts::default());
        let settled = &mut SettledCounts::default();
        assert!(plan.decide(&batch, &[], settled).is_none());
        assert!(plan.decide(&batch, &reply(&[None, None], &[1]), settled).is_none());
        assert!(plan.decide(&batch, &reply(&[None], &[]), settled).is_none());
        assert!(plan.decide(&batch, &[Value::Int(1), Value::Int(1)], settled).is_none());
    }
}
